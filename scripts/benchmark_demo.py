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
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JSONL = REPO / "docs" / "benchmarks.jsonl"
MARKDOWN = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- demo-table:begin -->", "<!-- demo-table:end -->"


def machine_description() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


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


def demo_table(records: list[dict]) -> str:
    lines = [
        "| date | machine | threads | iterations | wall time (s) | train (s) | mIoU MS+flip | mIoU SS | overrides |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        machine = record["machine"]
        lines.append(
            f"| {record['date'][:10]} | {machine['cpu_count']} CPUs, torch {machine['torch']} | "
            f"{machine['threads']} | {record['iterations']} | {record['wall_seconds']} | {record['train_seconds']} | "
            f"{record['mIoU_ms_flip']:.2f} | {record['mIoU_single_scale']:.2f} | "
            f"{' '.join(record['overrides']) or '-'} |"
        )
    return "\n".join(lines)


def update_markdown() -> None:
    records = [json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()]
    table = demo_table([r for r in records if r.get("benchmark") == "demo"])
    text = MARKDOWN.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    MARKDOWN.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="how many times to run the demo")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides")
    args = parser.parse_args()
    machine = machine_description()
    for _ in range(args.runs):
        result = run_demo(args.overrides)
        record = {
            "benchmark": "demo",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python train.py", *args.overrides]),
            "overrides": args.overrides,
            "machine": machine,
            **result,
        }
        with JSONL.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record))
    update_markdown()


if __name__ == "__main__":
    main()
