"""Benchmark results: one JSON line per measurement and Markdown tables of them. The published
ones are docs/benchmarks.jsonl and docs/benchmarks.md; a measurement not meant for them
goes to a run directory (:func:`benchmark_run_dir`)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision

from emanet.io import atomic_write

REPO = Path(__file__).resolve().parents[1]
JSONL = REPO / "docs" / "benchmarks.jsonl"
MARKDOWN = REPO / "docs" / "benchmarks.md"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The processor's name ("AMD EPYC", "Intel(R) Xeon(R) ..."), where the system says it:
    CPU benchmarks differ between processors far more than between runs."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_vector_extension(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The widest x86 vector extension the processor has ("avx512", "avx2", "avx"), where
    the system says: two processors of one name ("AMD EPYC") can differ in it, and so in
    the oneDNN kernels torch runs, in speed and in the float rounding of training."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return None
    widest_first = (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"))
    return next((name for name, flag in widest_first if flag in flags), None)


def machine_description() -> dict:
    description = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_vector_extension": cpu_vector_extension(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        description |= {
            "gpu": torch.cuda.get_device_name(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            # What "float32" means on tensor-core GPUs: PyTorch lets cuDNN convolutions use
            # TF32 by default, matrix products only when asked.
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }
    return description


def append_record(benchmark: str, command: str, result: dict) -> dict:
    """Append one measurement to docs/benchmarks.jsonl (only if docs/benchmarks.md has a
    table for it, so that no record goes unshown)."""
    split_at_table(benchmark)
    record = new_record(benchmark, command, result)
    write_record(record, JSONL)
    return record


def new_record(benchmark: str, command: str, result: dict) -> dict:
    """One measurement, with its date and the machine it ran on."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_description(),
        **result,
    }


def write_record(record: dict, jsonl: Path) -> None:
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with jsonl.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def records(benchmark: str, jsonl: Path | None = None) -> list[dict]:
    """The measurements of ``benchmark`` in ``jsonl`` (the published docs/benchmarks.jsonl
    unless given)."""
    jsonl = JSONL if jsonl is None else jsonl
    if not jsonl.exists():
        return []
    lines = (json.loads(line) for line in jsonl.read_text().splitlines() if line.strip())
    return [record for record in lines if record.get("benchmark") == benchmark]


def benchmark_run_dir() -> Path:
    """Where a measurement goes unless it is published: ``runs/benchmarks/<date>/`` under
    the working directory, like the runs of train.py (``runs/`` is ignored by git)."""
    return Path("runs") / "benchmarks" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def split_at_table(benchmark: str) -> tuple[str, str]:
    """docs/benchmarks.md up to ``<!-- BENCHMARK-table:begin -->`` and from its ``end`` marker on."""
    begin, end = f"<!-- {benchmark}-table:begin -->", f"<!-- {benchmark}-table:end -->"
    text = MARKDOWN.read_text()
    if begin not in text or end not in text.split(begin, 1)[1]:
        raise SystemExit(f"{MARKDOWN} has no {begin} ... {end} section; add one where the table should go")
    head, rest = text.split(begin, 1)
    return head + begin, end + rest.split(end, 1)[1]


def rebuild_table(benchmark: str, table: Callable[[list[dict]], str], section: str | None = None) -> None:
    """Replace the benchmark's table in docs/benchmarks.md (or its table named ``section``,
    for a second table of the same records) with ``table(records)``."""
    head, tail = split_at_table(section or benchmark)
    text = f"{head}\n{table(records(benchmark))}\n{tail}"
    atomic_write(MARKDOWN, lambda temp: Path(temp).write_text(text))


def replace_section(name: str, body: str, heading: str) -> None:
    """Put ``body`` between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in
    docs/benchmarks.md, replacing what was there, or at the end under a new ``## heading``
    where the markers are absent (a table that is not rebuilt from records)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = MARKDOWN.read_text()
    block = f"{begin}\n{body}{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    atomic_write(MARKDOWN, lambda temp: Path(temp).write_text(text))


def machine_cell(record: dict) -> str:
    machine = record["machine"]
    details = ", ".join(machine[key] for key in ("cpu_model", "cpu_vector_extension") if machine.get(key))
    cpus = f"{machine['cpu_count']} CPUs" + (f" ({details})" if details else "")
    return f"{machine.get('gpu') or cpus}, torch {machine['torch']}"


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


# The demo's table (scripts/benchmark_demo.py writes its records): one row per record.
DEMO_COLUMNS: list[Column] = [
    ("threads", lambda record, _: record["machine"]["threads"]),
    ("iterations", lambda record, _: record["iterations"]),
    ("wall time (s)", lambda record, _: record["wall_seconds"]),
    ("train (s)", lambda record, _: record["train_seconds"]),
    ("mIoU MS+flip", lambda record, _: f"{record['mIoU_ms_flip']:.2f}"),
    ("mIoU SS", lambda record, _: f"{record['mIoU_single_scale']:.2f}"),
    ("overrides", lambda record, _: " ".join(record["overrides"]) or "-"),
]


def demo_table(records: list[dict]) -> str:
    return rows_table(records, DEMO_COLUMNS, rows_of=lambda record: [record])
