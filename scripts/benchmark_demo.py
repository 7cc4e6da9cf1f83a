"""Time the built-in demo as a user runs it.

    python scripts/benchmark_demo.py [--runs 3] [--record] [--out DIR] [extra train.py overrides...]

Each run starts from an empty data root (so the dataset generation is timed too) and
executes ``python train.py`` in a subprocess. The wall time, the MS+flip and single-scale
mIoU of each run are written as JSON lines to ``runs/benchmarks/<date>/benchmarks.jsonl``
(or ``--out``); with ``--record`` they are appended to docs/benchmarks.jsonl instead, and
the demo table in docs/benchmarks.md is rebuilt from every demo line recorded there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emanet.benchmarks.records import (
    JSONL,
    append_record,
    benchmark_run_dir,
    new_record,
    rebuild_table,
    write_record,
)
from emanet.benchmarks.tables import demo_table

REPO = Path(__file__).resolve().parents[1]  # the checkout whose train.py is timed
DOCS = REPO / "docs"  # the published records and tables


def run_demo(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as temp:
        run_dir = Path(temp) / "run"
        command = [sys.executable, "train.py", f"data_root={temp}/data", f"hydra.run.dir={run_dir}", *overrides]
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True)
        seconds = time.perf_counter() - start
        metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "iterations": metrics["iteration"],
        "wall_seconds": round(seconds, 1),
        "train_seconds": metrics["train_seconds"],
        "mIoU_ms_flip": round(metrics["mIoU"], 2),
        "mIoU_single_scale": round(metrics["single_scale"]["mIoU"], 2),
        "per_class_IoU": {k: None if v is None else round(v, 2) for k, v in metrics["per_class_IoU"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="how many times to run the demo")
    parser.add_argument("--record", action="store_true",
                        help="publish the results in docs/benchmarks.jsonl and docs/benchmarks.md")
    parser.add_argument("--out", type=Path, help="results folder without --record (default runs/benchmarks/<date>)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides")
    args = parser.parse_args()
    run_dir = args.out or benchmark_run_dir()
    command = " ".join(["python train.py", *args.overrides])
    for _ in range(args.runs):
        result = {"overrides": args.overrides, **run_demo(args.overrides)}
        if args.record:
            print(json.dumps(append_record(DOCS, "demo", command, result)))
        else:
            record = new_record("demo", command, result)
            write_record(record, run_dir / JSONL)
            print(json.dumps(record))
    if args.record:
        rebuild_table(DOCS, "demo", demo_table)
    else:
        print(f"results in {run_dir} (--record publishes them in docs/benchmarks.jsonl and docs/benchmarks.md)")


if __name__ == "__main__":
    main()
