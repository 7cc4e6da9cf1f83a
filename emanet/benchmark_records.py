"""Benchmark results: one JSON line per measurement in docs/benchmarks.jsonl, tables in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
JSONL = REPO / "docs" / "benchmarks.jsonl"
MARKDOWN = REPO / "docs" / "benchmarks.md"


def machine_description() -> dict:
    description = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name()
    return description


def append_record(benchmark: str, command: str, result: dict) -> dict:
    record = {
        "benchmark": benchmark,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_description(),
        **result,
    }
    JSONL.parent.mkdir(parents=True, exist_ok=True)
    with JSONL.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    return record


def records(benchmark: str) -> list[dict]:
    if not JSONL.exists():
        return []
    lines = (json.loads(line) for line in JSONL.read_text().splitlines() if line.strip())
    return [record for record in lines if record.get("benchmark") == benchmark]


def rebuild_table(benchmark: str, table: Callable[[list[dict]], str]) -> None:
    """Replace the text between ``<!-- BENCHMARK-table:begin/end -->`` in docs/benchmarks.md."""
    begin, end = f"<!-- {benchmark}-table:begin -->", f"<!-- {benchmark}-table:end -->"
    text = MARKDOWN.read_text()
    if begin not in text:
        raise SystemExit(f"{MARKDOWN} has no {begin} ... {end} section for this table")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    MARKDOWN.write_text(f"{head}{begin}\n{table(records(benchmark))}\n{end}{tail}")


def machine_cell(record: dict) -> str:
    machine = record["machine"]
    where = machine.get("gpu") or f"{machine['cpu_count']} CPUs"
    return f"{where}, torch {machine['torch']}"


Column = tuple[str, Callable[[dict, dict], object]]


def rows_table(
    records: list[dict], columns: Sequence[Column], rows_of: Callable[[dict], list[dict]] = lambda r: r["rows"]
) -> str:
    """A Markdown table with a line per row of every record: date, machine, then ``columns``
    (each a header and a function of the record and the row)."""
    lines = [
        "| date | machine | " + " | ".join(name for name, _ in columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for record in records:
        for row in rows_of(record):
            cells = " | ".join(str(value(record, row)) for _, value in columns)
            lines.append(f"| {record['date'][:10]} | {machine_cell(record)} | {cells} |")
    return "\n".join(lines)
