"""The paper's tables with our runs beside its numbers: as records, Markdown and CSV, and
written to files with a chart each (``emanet.plots``).

The numbers printed by others are in ``emanet.paper_numbers``; our runs are read and
sorted into rows by ``emanet.run_results``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from emanet.io import atomic_write
from emanet.paper_numbers import (
    BEYOND_ROWS,
    EXTRA_TABLE1,
    PAPER_TABLE1,
    RANKING_TABLES,
    RANKING_TITLES,
    TABLE1_ROWS,
    paper_iteration_value,
)
from emanet.plots import comparison_chart, iteration_heatmap, write_figure
from emanet.run_results import single_and_multi_scale


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def difference(ours: float | None, paper: float | None) -> str:
    return "-" if ours is None or paper is None else f"{ours - paper:+.2f}"


def records_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def write_table_files(stem: Path, markdown: str, rows: list[dict], chart: Figure) -> list[Path]:
    """STEM.md, STEM.csv, and the chart as STEM.png and STEM.pdf, each written atomically."""
    paths = [stem.with_suffix(suffix) for suffix in (".md", ".csv")]
    atomic_write(paths[0], lambda temp: Path(temp).write_text(markdown + "\n"))
    atomic_write(paths[1], lambda temp: Path(temp).write_text(records_csv(rows)))
    return paths + write_figure(chart, stem)


# ----------------------------------------------------------------------- iteration table


def iteration_rows(results: dict[tuple[int, int], float], max_stages: int) -> list[dict]:
    """One row per (train_stages, eval_stages >= train_stages) with ours and the paper's mIoU."""
    rows = []
    for train_stages in range(1, max_stages + 1):
        for eval_stages in range(train_stages, max_stages + 1):
            rows.append({
                "train_stages": train_stages,
                "eval_stages": eval_stages,
                "mIoU": results.get((train_stages, eval_stages)),
                "paper_mIoU": paper_iteration_value(train_stages, eval_stages),
            })
    return rows


def iteration_markdown(rows: list[dict], max_stages: int, title: str) -> str:
    columns = range(1, max_stages + 1)
    header = "| train_stages (T) \\ eval_stages (T) | " + " | ".join(str(c) for c in columns) + " |"
    rule = "|---" * (max_stages + 1) + "|"
    lookup = {(r["train_stages"], r["eval_stages"]): r for r in rows}

    def table(key: str) -> list[str]:
        lines = [header, rule]
        for train_stages in columns:
            cells = [
                cell(lookup[(train_stages, eval_stages)][key]) if eval_stages >= train_stages else ""
                for eval_stages in columns
            ]
            lines.append(f"| {train_stages} | " + " | ".join(cells) + " |")
        return lines

    return "\n".join([
        f"# {title}", "", "mIoU (%) of one model per train_stages (T) (rows), evaluated with every eval_stages (T)",
        ">= it (columns). `-`: not run.", "", "## Ours", "", *table("mIoU"), "",
        "## Paper (ResNet-50, PASCAL VOC val)", "", *table("paper_mIoU"),
    ])


def write_iteration_table(rows: list[dict], max_stages: int, directory: Path, title: str) -> list[Path]:
    """iteration_table.{md,csv,png,pdf} in ``directory``."""
    chart = iteration_heatmap(rows, max_stages, title)
    markdown = iteration_markdown(rows, max_stages, title)
    return write_table_files(Path(directory) / "iteration_table", markdown, rows, chart)


# --------------------------------------------------------------------- Tables 1, 3 and 4


def table1_rows(runs: dict[str, dict], complexity: Sequence[dict]) -> list[dict]:
    """Table 1 as records: ours and the paper's SS and MS+flip mIoU, and the computed
    FLOPs / memory / params (increments over the backbone for the heads)."""
    by_method = {row["method"]: row for row in complexity}
    rows = []
    for method, (paper_ss, paper_ms) in {**PAPER_TABLE1, **{m: (None, None) for m in EXTRA_TABLE1}}.items():
        ss, ms = single_and_multi_scale(runs.get(method))
        measured = by_method.get(method, {})
        rows.append({
            "method": method, "ss": ss, "paper_ss": paper_ss, "ms_flip": ms, "paper_ms_flip": paper_ms,
            "flops_g": measured.get("flops_g"), "memory_m": measured.get("memory_m"),
            "params_m": measured.get("params_m"),
        })
    return rows


def table1_markdown(runs: dict[str, dict], complexity: Sequence[dict]) -> str:
    """Table 1: SS / MS+flip from runs (by method name), FLOPs / memory / params computed
    (the heads' as "+" increments over the backbone); the extra baselines last; `-` where a
    value is missing."""
    lines = [
        "## Table 1: PASCAL VOC val, ResNet-101",
        "",
        "| Method | SS | SS (paper) | diff | MS+Flip | MS+Flip (paper) | diff "
        "| FLOPs (G) | Memory (MiB) | Params (M) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table1_rows(runs, complexity):
        plus = "" if r["method"] == "ResNet-101" else "+"
        computed = ["-" if r[key] is None else f"{plus}{r[key]}" for key in ("flops_g", "memory_m", "params_m")]
        lines.append(
            f"| {r['method']} | {cell(r['ss'])} | {cell(r['paper_ss'])} | {difference(r['ss'], r['paper_ss'])} | "
            f"{cell(r['ms_flip'])} | {cell(r['paper_ms_flip'])} | {difference(r['ms_flip'], r['paper_ms_flip'])} | "
            + " | ".join(computed) + " |"
        )
    return "\n".join(lines)


def ranking_rows(paper: dict[str, float], runs: dict[str, dict]) -> list[dict]:
    """Table 3 or 4 as records: the paper's mIoU, ours (multi-scale + flip, else single
    scale, said in ``ours_protocol``)."""
    rows = []
    for method, value in paper.items():
        single, multi = single_and_multi_scale(runs.get(method))
        ours, protocol = (multi, "ms_flip") if multi is not None else (single, "ss" if single is not None else "")
        rows.append({"method": method, "paper_mIoU": value, "mIoU": ours, "ours_protocol": protocol})
    return rows


def ranking_markdown(title: str, paper: dict[str, float], runs: dict[str, dict]) -> str:
    """Tables 3 and 4: the paper's list (multi-scale + flip), our runs' mIoU beside the
    EMANet rows; a run evaluated single scale only is shown marked "(SS)"."""
    lines = [f"## {title}", "", "| Method | mIoU (paper) | mIoU (ours) | diff |", "|---|---|---|---|"]
    for r in ranking_rows(paper, runs):
        mark = " (SS)" if r["ours_protocol"] == "ss" else ""
        lines.append(f"| {r['method']} | {r['paper_mIoU']:.1f} | {cell(r['mIoU'])}{mark} | "
                     f"{difference(r['mIoU'], r['paper_mIoU'])} |")
    return "\n".join(lines)


def write_table1(runs: dict[str, dict], complexity: Sequence[dict], directory: Path) -> list[Path]:
    """table1.{md,csv,png,pdf} in ``directory``; the chart shows mIoU, ours beside the paper's."""
    rows = table1_rows(runs, complexity)
    # The backbone's row holds complexity only: neither the paper nor a run gives it an mIoU.
    groups = [(row["method"], [("SS", row["ss"], False), ("SS paper", row["paper_ss"], True),
                               ("MS+flip", row["ms_flip"], False), ("MS+flip paper", row["paper_ms_flip"], True)])
              for row in rows if row["method"] in TABLE1_ROWS.values()]
    chart = comparison_chart("Table 1: PASCAL VOC val mIoU (%), ResNet-101; grey: the paper's", groups)
    return write_table_files(Path(directory) / "table1", table1_markdown(runs, complexity), rows, chart)


def write_ranking_table(number: int, runs: dict[str, dict], directory: Path) -> list[Path]:
    """table<number>.{md,csv,png,pdf} (Table 3 or 4) in ``directory``."""
    title, paper = RANKING_TITLES[number], RANKING_TABLES[number]
    rows = ranking_rows(paper, runs)
    groups = []
    for row in rows:
        bars = [("paper", row["paper_mIoU"], True)]
        if row["method"].startswith("EMANet"):  # the rows this project trains
            protocol = {"ms_flip": " MS+flip", "ss": " SS"}.get(row["ours_protocol"], "")
            bars.append((f"ours{protocol}", row["mIoU"], False))
        groups.append((row["method"], bars))
    chart = comparison_chart(f"{title} mIoU (%); grey: the paper's (MS+flip)", groups)
    return write_table_files(Path(directory) / f"table{number}", ranking_markdown(title, paper, runs), rows, chart)


# ----------------------------------------------------------------------- beyond the paper


def beyond_rows(runs: dict[tuple[str, bool], dict]) -> list[dict]:
    """The table beyond the paper as records, one per (row, reference; a row without one
    once): ours SS and MS+flip beside the reference's."""
    records = []
    for row in BEYOND_ROWS:
        ss, ms = single_and_multi_scale(runs.get((row.experiment, row.imported)))
        for source, reference_ss, reference_ms in row.references or (("-", None, None),):
            records.append({
                "benchmark": row.benchmark, "network": row.network, "experiment": row.experiment,
                "weights": row.weights, "ss": ss, "ms_flip": ms, "reference": source,
                "reference_ss": reference_ss, "reference_ms_flip": reference_ms,
            })
    return records


def beyond_markdown(runs: dict[tuple[str, bool], dict]) -> str:
    lines = [
        "## Beyond the paper: Cityscapes and ADE20K",
        "",
        "| Benchmark | Network | Experiment | Weights | SS | MS+Flip | Reference | SS (ref) | diff "
        "| MS+Flip (ref) | diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in beyond_rows(runs):
        lines.append(
            f"| {r['benchmark']} | {r['network']} | {r['experiment']} | {r['weights']} | {cell(r['ss'])} | "
            f"{cell(r['ms_flip'])} | {r['reference']} | {cell(r['reference_ss'])} | "
            f"{difference(r['ss'], r['reference_ss'])} | {cell(r['reference_ms_flip'])} | "
            f"{difference(r['ms_flip'], r['reference_ms_flip'])} |"
        )
    return "\n".join(lines)


def write_beyond_table(runs: dict[tuple[str, bool], dict], directory: Path) -> list[Path]:
    """beyond.{md,csv,png,pdf} in ``directory``: ours blue, the references grey."""
    groups = []
    for row in BEYOND_ROWS:
        ss, ms = single_and_multi_scale(runs.get((row.experiment, row.imported)))
        bars = [(f"{row.weights} SS", ss, False), (f"{row.weights} MS+flip", ms, False)]
        for source, reference_ss, reference_ms in row.references:
            bars += [(f"{source} SS", reference_ss, True), (f"{source} MS+flip", reference_ms, True)]
        groups.append((f"{row.benchmark}, {row.network}", bars))
    chart = comparison_chart("Beyond the paper: val mIoU (%); grey: published by others", groups)
    return write_table_files(Path(directory) / "beyond", beyond_markdown(runs), beyond_rows(runs), chart)
