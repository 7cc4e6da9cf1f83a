"""Tables 1, 3 and 4 of the paper, and the table beyond it (Cityscapes, ADE20K), from run
directories, with the paper's (or others' published) values beside ours.

    python scripts/paper_tables.py RUN_DIR [RUN_DIR ...] [--output tables.md]

Each RUN_DIR is a training or evaluation run directory (its metrics.json and config.yaml
are read). Runs are matched to table rows by experiment name (voc_emanet512 ->
EMANet(512), context_emanet512 -> Table 3, cocostuff10k_emanet512 -> Table 4,
cityscapes_emanet512 / ade20k_emanet512 / cityscapes_mmseg_* -> beyond the paper...) and
backbone depth; where several runs fill one row, the last one given wins. An evaluation of
imported weights (scripts/import_mmseg_checkpoint.py: mmsegmentation's published models)
fills the "published, evaluated here" row of its experiment. Rows without a run show "-".
FLOPs, memory and parameters come from emanet.benchmarks.complexity (scripts/complexity.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emanet.benchmarks.complexity import PAPER_SIZE, measure
from emanet.io import atomic_write
from emanet.paper_numbers import PAPER_TABLE3, PAPER_TABLE4
from emanet.run_results import collect
from emanet.tables import beyond_markdown, ranking_markdown, table1_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="*", type=Path)
    parser.add_argument("--output", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    results = collect(args.run_dirs)
    text = "\n\n".join([
        table1_markdown(results.table1, measure(PAPER_SIZE)),
        ranking_markdown("Table 3: PASCAL Context", PAPER_TABLE3, results.table3),
        ranking_markdown("Table 4: COCO-Stuff 10k", PAPER_TABLE4, results.table4),
        beyond_markdown(results.beyond),
    ]) + "\n"
    for line in results.notes:
        print(f"note: {line}", file=sys.stderr)
    print(text)
    if args.output:
        atomic_write(args.output, lambda temp: Path(temp).write_text(text))


if __name__ == "__main__":
    main()
