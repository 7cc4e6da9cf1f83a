"""Benchmark results: one JSON line per measurement and Markdown tables of them.

A folder of results holds ``benchmarks.jsonl`` (the records) and ``benchmarks.md`` (their
tables): the published ones are a checkout's docs/ folder, which the scripts name; a
measurement not meant for them goes to a run directory (:func:`benchmark_run_dir`) of the
same layout.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision
from omegaconf import DictConfig

from emanet.errors import MissingSectionError
from emanet.io import atomic_write, replace_marked_section

JSONL = "benchmarks.jsonl"
MARKDOWN = "benchmarks.md"


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


def machine_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The machine a measurement ran on: processor (as ``cpuinfo`` names it), versions,
    threads and, on a GPU, the settings that decide what "float32" computes."""
    description = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(cpuinfo),
        "cpu_vector_extension": cpu_vector_extension(cpuinfo),
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


def append_record(folder: Path, benchmark: str, command: str, result: dict) -> dict:
    """Append one measurement to ``folder``'s benchmarks.jsonl (only if its benchmarks.md has
    a table for it, so that no record goes unshown)."""
    split_at_table(folder / MARKDOWN, benchmark)
    record = new_record(benchmark, command, result)
    write_record(record, folder / JSONL)
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


def records(benchmark: str, folder: Path) -> list[dict]:
    """The measurements of ``benchmark`` in ``folder``'s benchmarks.jsonl."""
    jsonl = folder / JSONL
    if not jsonl.exists():
        return []
    lines = (json.loads(line) for line in jsonl.read_text().splitlines() if line.strip())
    return [record for record in lines if record.get("benchmark") == benchmark]


def benchmark_run_dir() -> Path:
    """Where a measurement goes unless it is published: ``runs/benchmarks/<date>/`` under
    the working directory, like the runs of train.py (``runs/`` is ignored by git)."""
    return Path("runs") / "benchmarks" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def split_at_table(markdown: Path, benchmark: str) -> tuple[str, str]:
    """``markdown`` up to ``<!-- BENCHMARK-table:begin -->`` and from its ``end`` marker on."""
    begin, end = f"<!-- {benchmark}-table:begin -->", f"<!-- {benchmark}-table:end -->"
    text = markdown.read_text()
    if begin not in text or end not in text.split(begin, 1)[1]:
        raise MissingSectionError(f"{markdown} has no {begin} ... {end} section; add one where the table should go")
    head, rest = text.split(begin, 1)
    return head + begin, end + rest.split(end, 1)[1]


def rebuild_table(
    folder: Path, benchmark: str, table: Callable[[list[dict]], str], section: str | None = None
) -> None:
    """Replace the benchmark's table in ``folder``'s benchmarks.md (or its table named
    ``section``, for a second table of the same records) with ``table(records)``."""
    head, tail = split_at_table(folder / MARKDOWN, section or benchmark)
    text = f"{head}\n{table(records(benchmark, folder))}\n{tail}"
    atomic_write(folder / MARKDOWN, lambda temp: Path(temp).write_text(text))


def replace_section(folder: Path, name: str, body: str, heading: str) -> None:
    """Put ``body`` between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in ``folder``'s
    benchmarks.md, replacing what was there, or at the end under a new ``## heading``
    where the markers are absent (a table that is not rebuilt from records)."""
    markdown = folder / MARKDOWN
    begin = f"<!-- {name}:begin -->"
    text = markdown.read_text()
    if begin in text:
        replace_marked_section(markdown, name, body)
        return
    text = text.rstrip("\n") + f"\n\n## {heading}\n\n{begin}\n{body}<!-- {name}:end -->\n"
    atomic_write(markdown, lambda temp: Path(temp).write_text(text))


def model_name(cfg: DictConfig) -> str:
    """A record's name of the configured model: "voc_emanet512 R101 OS8"."""
    return f"{cfg.name} R{cfg.model.backbone.depth} OS{cfg.model.backbone.output_stride}"


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
