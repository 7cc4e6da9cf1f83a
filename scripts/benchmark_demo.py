"""Time the built-in demo as a user runs it, and record the result in docs/benchmarks.md.

    python scripts/benchmark_demo.py [--runs 3] [extra train.py overrides...]

Each run starts from an empty data root (so the dataset generation is timed too) and
executes ``python train.py`` in a subprocess. The wall time, the MS+flip and single-scale
mIoU are appended as JSON lines to docs/benchmarks.jsonl, and the demo table in
docs/benchmarks.md is rebuilt from every demo line recorded there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emanet.benchmark_records import append_record, demo_table, rebuild_table

REPO = Path(__file__).resolve().parents[1]


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
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides")
    args = parser.parse_args()
    for _ in range(args.runs):
        result = run_demo(args.overrides)
        command = " ".join(["python train.py", *args.overrides])
        print(json.dumps(append_record("demo", command, {"overrides": args.overrides, **result})))
    rebuild_table("demo", demo_table)


if __name__ == "__main__":
    main()
