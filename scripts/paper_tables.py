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
FLOPs, memory and parameters come from scripts/complexity.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emanet.io import atomic_write
from emanet.tables import PAPER_TABLE3, PAPER_TABLE4, beyond_markdown, collect, ranking_markdown, table1_markdown

sys.path.insert(0, str(Path(__file__).resolve().parent))
from complexity import measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="*", type=Path)
    parser.add_argument("--output", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    table1, table3, table4, beyond, notes = collect(args.run_dirs)
    text = "\n\n".join([
        table1_markdown(table1, measure(513)),
        ranking_markdown("Table 3: PASCAL Context", PAPER_TABLE3, table3),
        ranking_markdown("Table 4: COCO-Stuff 10k", PAPER_TABLE4, table4),
        beyond_markdown(beyond),
    ]) + "\n"
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    print(text)
    if args.output:
        atomic_write(args.output, lambda temp: Path(temp).write_text(text))


if __name__ == "__main__":
    main()
