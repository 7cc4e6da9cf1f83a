"""The table of each benchmark, and where a measurement goes: a run directory by default, the
published records and tables (a checkout's docs/ folder) when asked.

Each table is a function of the benchmark's records; the published benchmarks.md holds each
between ``<!-- NAME-table:begin -->`` and ``<!-- NAME-table:end -->``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from emanet.benchmarks.acceptance import acceptance_table
from emanet.benchmarks.records import (
    JSONL,
    MARKDOWN,
    Column,
    append_record,
    benchmark_run_dir,
    new_record,
    rebuild_table,
    records,
    rows_table,
    write_record,
)
from emanet.benchmarks.unit import unit_growth, unit_growth_table, unit_table
from emanet.io import atomic_write

# The columns of each benchmark's table: a header and a function of the record and one of its rows.
DATA_COLUMNS: list[Column] = [
    ("workers", lambda r, row: row["workers"]),
    ("images/s", lambda r, row: row["images_per_second"]),
    ("command", lambda r, row: f"`{r['command']}`"),
]

TRAIN_COLUMNS: list[Column] = [
    ("model", lambda r, row: r["model"]),
    ("crop", lambda r, row: r["crop"]),
    ("batch", lambda r, row: r["batch"]),
    ("variant", lambda r, row: row["variant"]),
    ("images/s", lambda r, row: row["images_per_second"]),
    ("TFLOP/s", lambda r, row: row["tflops"]),
    ("fraction of bf16 peak", lambda r, row: row["fraction_of_bf16_peak"] or "-"),
    ("peak memory (GiB)", lambda r, row: row["peak_memory_gib"] or "-"),
]

EVAL_COLUMNS: list[Column] = [
    ("model", lambda r, row: r["model"]),
    ("images", lambda r, row: r["image_size"]),
    ("mode", lambda r, row: r.get("mode", "whole")),
    ("variant", lambda r, row: row.get("variant", "fp32")),
    ("protocol", lambda r, row: row["protocol"]),
    ("images/s", lambda r, row: row["images_per_second"]),
    ("1,449 images (min)", lambda r, row: f"{1449 / row['images_per_second'] / 60:.1f}"),
]

TARGETS_COLUMNS: list[Column] = [
    ("model", lambda r, row: r["model"]),
    ("workload", lambda r, row: row["workload"]),
    ("TFLOP per image", lambda r, row: row["tflop_per_image"]),
    ("target images/s", lambda r, row: row["target_images_per_second"]),
    ("TFLOP/s needed", lambda r, row: row["tflops_needed"]),
    *[(f"of {gpu} bf16 peak", lambda r, row, gpu=gpu: f"{row['fraction_of_bf16_peak'][gpu]:.1%}")
      for gpu in ("H100", "A100", "L40S")],
]


def cell(value: object, form: str = "{}") -> str:
    """A table cell: ``value`` as ``form`` says, "-" where it was not measured."""
    return "-" if value is None else form.format(value)


def infer_notes(record: dict, row: dict) -> str:
    """Why a row is empty, which row is the reference and which the fastest that agrees."""
    if row["skipped"]:
        return f"skipped: {row['skipped']}"
    notes = []
    if row["variant"] == "eager":
        notes.append(f"the reference; weights {record['weights']}: the speed does not depend on them")
    if row["export_peak_rss_gib"] is not None:
        notes.append(f"the export's process: {row['export_peak_rss_gib']:.2f} GiB peak RSS")
    if row["agrees"] is False:
        notes.append(f"classes differ on more than {1 - record['min_agreement']:.2%} of pixels")
    fastest = {(fastest["model"], fastest["batch"], fastest["variant"]) for fastest in record["fastest_agreeing"]}
    if (row["model"], row["batch"], row["variant"]) in fastest:
        notes.append("the fastest that agrees")
    return "; ".join(notes) or "-"


INFER_COLUMNS: list[Column] = [
    ("network", lambda r, row: row["model"]),
    ("size", lambda r, row: f"{r['size']}x{r['size']}"),
    ("batch", lambda r, row: row["batch"]),
    ("threads", lambda r, row: r["threads"]),
    ("variant", lambda r, row: row["variant"]),
    ("images/s", lambda r, row: cell(row["images_per_second"])),
    ("speed-up vs eager fp32", lambda r, row: cell(row["speedup_vs_eager"], "{:.2f}x")),
    ("peak RSS of the process (GiB)", lambda r, row: cell(row["peak_rss_gib"], "{:.2f}")),
    ("pixels agreeing with eager fp32", lambda r, row: cell(row["pixel_agreement"], "{:.4%}")),
    ("compile/export (s)", lambda r, row: cell(row["setup_seconds"])),
    ("notes", infer_notes),
]

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


def columns_table(columns: Sequence[Column]) -> Callable[[list[dict]], str]:
    return lambda records: rows_table(records, columns)


# The table of each benchmark of scripts/benchmark.py, from its records.
TABLES: dict[str, Callable[[list[dict]], str]] = {
    "data": columns_table(DATA_COLUMNS), "unit": unit_table, "train": columns_table(TRAIN_COLUMNS),
    "eval": columns_table(EVAL_COLUMNS), "targets": columns_table(TARGETS_COLUMNS), "acceptance": acceptance_table,
    "infer": columns_table(INFER_COLUMNS),
}


def rebuild_tables(docs: Path, benchmark: str) -> None:
    """The benchmark's tables in ``docs``'s benchmarks.md, from its benchmarks.jsonl."""
    rebuild_table(docs, benchmark, TABLES[benchmark])
    if benchmark == "unit":
        rebuild_table(docs, "unit", unit_growth_table, section="unit-growth")


def rebuild_every_table(docs: Path) -> list[str]:
    """Every table of ``docs``'s benchmarks.md from its benchmarks.jsonl (after adding lines
    measured elsewhere); the names of the tables rebuilt."""
    for benchmark in TABLES:
        rebuild_tables(docs, benchmark)
    rebuild_table(docs, "demo", demo_table)
    return [*TABLES, "demo"]


def write_run_tables(run_dir: Path) -> None:
    """The run directory's benchmarks.md: the tables of every benchmark measured there."""
    sections = []
    for benchmark, table in TABLES.items():
        measured = records(benchmark, run_dir)
        if measured:
            sections.append(f"## {benchmark}\n\n{table(measured)}\n")
        if measured and benchmark == "unit" and any(unit_growth(record["rows"]) for record in measured):
            sections.append(f"## unit growth\n\n{unit_growth_table(measured)}\n")
    text = "\n".join(sections)
    atomic_write(run_dir / MARKDOWN, lambda temp: Path(temp).write_text(text))


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command that measures it again, ``--record`` left out: where the result went does
    not change what was measured."""
    return " ".join(["python", script, *(arg for arg in argv if arg != "--record")])


def keep_result(
    benchmark: str, command: str, result: dict, docs: Path, publish: bool, run_dir: Path | None = None
) -> Path:
    """Keep ``result`` (with a list of ``rows``) of ``command``: with ``publish``, a line in
    ``docs``'s benchmarks.jsonl and the benchmark's tables in its benchmarks.md rebuilt;
    otherwise in ``run_dir`` (default: a new one under runs/benchmarks/), so that a trial at
    toy sizes leaves the published numbers and the checkout alone. Returns the folder."""
    if publish:
        append_record(docs, benchmark, command, result)
        rebuild_tables(docs, benchmark)
        print(f"recorded in {docs / JSONL} and {docs / MARKDOWN}")
        return docs
    run_dir = run_dir or benchmark_run_dir()
    write_record(new_record(benchmark, command, result), run_dir / JSONL)
    write_run_tables(run_dir)
    print(f"results in {run_dir} (--record publishes them in docs/benchmarks.jsonl and docs/benchmarks.md)")
    return run_dir
