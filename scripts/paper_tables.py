"""Tables 1, 3 and 4 of the paper from run directories, with the paper's values beside ours.

    python scripts/paper_tables.py RUN_DIR [RUN_DIR ...] [--output tables.md]

Each RUN_DIR is a training or evaluation run directory (its metrics.json and config.yaml
are read). Runs are matched to table rows by experiment name (voc_emanet512 ->
EMANet(512), context_emanet512 -> Table 3, cocostuff10k_emanet512 -> Table 4...) and
backbone depth; where several runs fill one row, the last one given wins. Rows without
a run show "-". FLOPs, memory and parameters come from scripts/complexity.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from emanet.io import atomic_write
from emanet.tables import (
    PAPER_TABLE3,
    PAPER_TABLE4,
    ranking_markdown,
    read_metrics,
    table1_markdown,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from complexity import measure  # noqa: E402

TABLE1_ROWS = {
    "voc_emanet512": "EMANet(512)",
    "voc_emanet256": "EMANet(256)",
    "voc_deeplabv3": "DeeplabV3",
    "voc_deeplabv3plus": "DeeplabV3+",
    "voc_psanet": "PSANet",
    "voc_nonlocal": "Non-local",
    "voc_fcn": "FCN",
}
RANKING_ROWS = {"context_emanet512": 3, "cocostuff10k_emanet512": 4}
RANKING_TABLES = {3: PAPER_TABLE3, 4: PAPER_TABLE4}


def collect(run_dirs: list[Path]) -> tuple[dict, dict, dict, list[str]]:
    """Table 1, 3 and 4 rows (method -> metrics) from the runs, and notes on the runs left
    out or trained otherwise than the paper's row."""
    table1, table3, table4, notes = {}, {}, {}, []
    for given in run_dirs:
        run_dir = Path(given).parent if Path(given).is_file() else Path(given)  # a run or its metrics.json
        try:
            metrics = read_metrics(run_dir)
        except ValueError as error:  # not JSON
            notes.append(f"{run_dir / 'metrics.json'}: not a metrics.json ({error})")
            continue
        if metrics is None:
            notes.append(f"{run_dir}: no metrics.json (not finished?)")
            continue
        experiment = metrics.get("experiment")
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            notes.append(f"{run_dir}: no config.yaml beside metrics.json, so its backbone is unknown; left out")
            continue
        config = OmegaConf.load(config_path)
        depth = OmegaConf.select(config, "model.backbone.depth")
        row = f"EMANet (ResNet-{depth})"
        if experiment in TABLE1_ROWS and depth == 101:
            table1[TABLE1_ROWS[experiment]] = metrics
        elif experiment in RANKING_ROWS and row in RANKING_TABLES[RANKING_ROWS[experiment]]:
            target = table3 if RANKING_ROWS[experiment] == 3 else table4
            target[row] = metrics
        else:
            notes.append(f"{run_dir}: experiment {experiment!r} (depth {depth}) is in none of the tables")
            continue
        aux = OmegaConf.select(config, "model.aux.weight", default=0.0)
        if aux:
            notes.append(f"{run_dir}: trained with an auxiliary head (model.aux.weight={aux}), the paper without")
    return table1, table3, table4, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="*", type=Path)
    parser.add_argument("--output", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    table1, table3, table4, notes = collect(args.run_dirs)
    text = "\n\n".join([
        table1_markdown(table1, measure(513)),
        ranking_markdown("Table 3: PASCAL Context", PAPER_TABLE3, table3),
        ranking_markdown("Table 4: COCO-Stuff 10k", PAPER_TABLE4, table4),
    ]) + "\n"
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    print(text)
    if args.output:
        atomic_write(args.output, lambda temp: Path(temp).write_text(text))


if __name__ == "__main__":
    main()
