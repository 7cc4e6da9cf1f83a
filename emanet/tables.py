"""The paper's tables: its numbers, ours from metrics.json files, and how they are written.

Used by ``emanet.reproduce`` and the scripts iteration_table.py, paper_tables.py and
reproduce_paper.py.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from emanet.engine.evaluator import is_multi_scale
from emanet.engine.figures import (
    BAR_COLOUR,
    MISSING,
    PAD,
    colour_bar_width,
    colour_scale,
    draw_colour_bar,
    font,
    text_colour,
    text_size,
)
from emanet.io import atomic_write

# PASCAL VOC val mIoU (%), ResNet-50: rows T used in training, columns T at evaluation.
PAPER_ITERATION_TABLE = {
    1: [77.34, 77.52, 77.60, 77.59, 77.59, 77.59, 77.59, 77.59],
    2: [77.75, 78.04, 78.15, 78.15, 78.12, 78.12, 78.17],
    3: [78.52, 78.80, 78.86, 78.88, 78.89, 78.88],
    4: [78.14, 78.25, 78.27, 78.28, 78.27],
    5: [77.70, 77.76, 77.82, 77.86],
    6: [77.85, 77.91, 77.92],
    7: [77.11, 77.14],
    8: [77.24],
}


def paper_iteration_value(t_train: int, t_eval: int) -> float | None:
    row = PAPER_ITERATION_TABLE.get(t_train, [])
    offset = t_eval - t_train
    return row[offset] if 0 <= offset < len(row) else None


# Table 1 (PASCAL VOC val, ResNet-101): method -> (SS, MS+flip).
PAPER_TABLE1 = {
    "ResNet-101": (None, None),
    "DeeplabV3": (78.51, 79.77),
    "DeeplabV3+": (79.35, 80.57),
    "PSANet": (78.51, 79.77),
    "EMANet(256)": (79.73, 80.94),
    "EMANet(512)": (80.05, 81.32),
}
# Baselines trained on the same recipe that the paper's Table 1 does not list.
EXTRA_TABLE1 = ("Non-local", "FCN")
# Table 3 (PASCAL Context) and Table 4 (COCO-Stuff): method -> mIoU.
PAPER_TABLE3 = {
    "PSPNet (ResNet-101)": 47.8, "DANet (ResNet-50)": 50.1, "MSCI (ResNet-152)": 50.3,
    "EMANet (ResNet-50)": 50.5, "SGR (ResNet-101)": 50.8, "CCL (ResNet-101)": 51.6,
    "EncNet (ResNet-101)": 51.7, "SGR+ (ResNet-101)": 52.5, "DANet (ResNet-101)": 52.6,
    "EMANet (ResNet-101)": 53.1,
}
PAPER_TABLE4 = {
    "RefineNet (ResNet-101)": 33.6, "CCL (ResNet-101)": 35.7, "DANet (ResNet-50)": 37.2,
    "DSSPN (ResNet-101)": 37.3, "EMANet (ResNet-50)": 37.6, "SGR (ResNet-101)": 39.1,
    "DANet (ResNet-101)": 39.7, "EMANet (ResNet-101)": 39.9,
}


# The experiments behind each row: Table 1's by experiment (ResNet-101), Tables 3 and 4 by
# experiment and backbone depth ("EMANet (ResNet-<depth>)").
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
RANKING_TITLES = {3: "Table 3: PASCAL Context", 4: "Table 4: COCO-Stuff 10k"}
PAPER_COLOUR = (190, 190, 190)


def read_metrics(path: Path) -> dict | None:
    """A run's metrics.json, or None if the run has not finished."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def difference(ours: float | None, paper: float | None) -> str:
    return "-" if ours is None or paper is None else f"{ours - paper:+.2f}"


# ----------------------------------------------------------------------- iteration table


def iteration_rows(results: dict[tuple[int, int], float], max_stages: int) -> list[dict]:
    """One row per (T_train, T_eval >= T_train) with ours and the paper's mIoU."""
    rows = []
    for t_train in range(1, max_stages + 1):
        for t_eval in range(t_train, max_stages + 1):
            rows.append({
                "t_train": t_train,
                "t_eval": t_eval,
                "mIoU": results.get((t_train, t_eval)),
                "paper_mIoU": paper_iteration_value(t_train, t_eval),
            })
    return rows


def iteration_markdown(rows: list[dict], max_stages: int, title: str) -> str:
    columns = range(1, max_stages + 1)
    header = "| T_train \\ T_eval | " + " | ".join(str(c) for c in columns) + " |"
    rule = "|---" * (max_stages + 1) + "|"
    lookup = {(r["t_train"], r["t_eval"]): r for r in rows}

    def table(key: str) -> list[str]:
        lines = [header, rule]
        for t_train in columns:
            cells = [
                cell(lookup[(t_train, t_eval)][key]) if t_eval >= t_train else "" for t_eval in columns
            ]
            lines.append(f"| {t_train} | " + " | ".join(cells) + " |")
        return lines

    return "\n".join([
        f"# {title}", "", "mIoU (%) of one model per T used in training (rows), evaluated with every T",
        ">= it (columns). `-`: not run.", "", "## Ours", "", *table("mIoU"), "",
        "## Paper (ResNet-50, PASCAL VOC val)", "", *table("paper_mIoU"), "",
    ])


def iteration_csv(rows: list[dict]) -> str:
    return records_csv(rows)


def shared_value_range(rows: list[dict]) -> tuple[float, float]:
    """The lowest and highest value of both tables: one colour scale for the two panels, so
    that a colour means the same mIoU in ours and the paper's."""
    values = [row[key] for row in rows for key in ("mIoU", "paper_mIoU") if row[key] is not None]
    return (min(values), max(values)) if values else (0.0, 1.0)


def heatmap(rows: list[dict], max_stages: int, title: str, cell_size: int = 64) -> Image.Image:
    """Ours (left) and the paper's (right) tables as coloured grids, values written in, on one
    colour scale (dark blue: the lowest value of both, yellow: the highest) shown by a colour bar.

    Drawn with Pillow (no plotting library needed); the canvas is sized from the measured
    title and captions, so nothing is cut off at any table size.
    """
    typeface = font(12)
    lookup = {(r["t_train"], r["t_eval"]): r for r in rows}
    low, high = shared_value_range(rows)
    grid = cell_size * max_stages
    gap = 40
    captions = ("ours", "paper (ResNet-50, PASCAL VOC val)")
    axis_note = "rows: T in training, columns: T at evaluation"
    title_width, line_height = text_size(title, typeface)
    label_width = text_size(str(max_stages), typeface)[0] + 8
    panel_width = max(label_width + grid, *(text_size(caption, typeface)[0] for caption in captions))
    bar_width = colour_bar_width(low, high, cell, typeface)
    content_width = 2 * panel_width + gap + 16 + bar_width
    width = max(content_width, title_width, text_size(axis_note, typeface)[0]) + 2 * PAD
    top = PAD + line_height + 10 + line_height + 6 + line_height + 4  # title, caption, column numbers
    height = top + grid + 10 + line_height + PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, fill="black", font=typeface)
    draw.text((PAD, top + grid + 10), axis_note, fill="black", font=typeface)
    for panel, (key, caption) in enumerate(zip(("mIoU", "paper_mIoU"), captions, strict=True)):
        left = PAD + panel * (panel_width + gap) + label_width
        draw.text((left, PAD + line_height + 10), caption, fill="black", font=typeface)
        for t in range(1, max_stages + 1):
            number_width, number_height = text_size(str(t), typeface)
            centre = (t - 1) * cell_size + cell_size // 2
            draw.text((left + centre - number_width // 2, top - 4 - number_height), str(t), fill="black", font=typeface)
            draw.text((left - 8 - number_width, top + centre - number_height // 2), str(t), fill="black",
                      font=typeface)
        for (t_train, t_eval), row in lookup.items():
            x0, y0 = left + (t_eval - 1) * cell_size, top + (t_train - 1) * cell_size
            value = row[key]
            fraction = 0.5 if value is None or high == low else (value - low) / (high - low)
            colour = MISSING if value is None else colour_scale(fraction)
            draw.rectangle([x0, y0, x0 + cell_size - 1, y0 + cell_size - 1], fill=colour, outline="white")
            text = cell(value)
            text_width, text_height = text_size(text, typeface)
            draw.text((x0 + (cell_size - text_width) // 2, y0 + (cell_size - text_height) // 2), text,
                      fill=text_colour(fraction), font=typeface)
    bar_left = PAD + 2 * panel_width + gap + 16
    draw_colour_bar(draw, bar_left, top, grid, low, high, cell, typeface)
    return image


def write_iteration_table(rows: list[dict], max_stages: int, directory: Path, title: str) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"iteration_table.{suffix}" for suffix in ("md", "csv", "png")]
    atomic_write(paths[0], lambda temp: Path(temp).write_text(iteration_markdown(rows, max_stages, title)))
    atomic_write(paths[1], lambda temp: Path(temp).write_text(iteration_csv(rows)))
    atomic_write(paths[2], lambda temp: heatmap(rows, max_stages, title).save(temp, format="PNG"))
    return paths


# --------------------------------------------------------------------- Tables 1, 3 and 4


def collect(run_dirs: Sequence[Path]) -> tuple[dict, dict, dict, dict, list[str]]:
    """Table 1, 3 and 4 rows (method -> metrics) and the rows beyond the paper ((experiment,
    imported) -> metrics) from run directories (or their metrics.json), matched by experiment
    name and backbone depth; where several runs fill one row, the last wins. Also notes on
    the runs left out or trained otherwise than the paper's row."""
    table1, table3, table4, beyond, notes = {}, {}, {}, {}, []
    for given in run_dirs:
        run_dir = Path(given).parent if Path(given).is_file() else Path(given)
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
        elif (experiment, "imported_from" in metrics) in BEYOND_KEYS:
            beyond[(experiment, "imported_from" in metrics)] = metrics
            continue  # recipes of their own: the auxiliary-head note is about the paper's
        else:
            notes.append(f"{run_dir}: experiment {experiment!r} (depth {depth}) is in none of the tables")
            continue
        aux = OmegaConf.select(config, "model.aux.weight", default=0.0)
        if aux:
            notes.append(f"{run_dir}: trained with an auxiliary head (model.aux.weight={aux}), the paper without")
    return table1, table3, table4, beyond, notes


def table1_markdown(runs: dict[str, dict], complexity: Sequence[dict]) -> str:
    """Table 1: SS / MS+flip from runs (by method name), FLOPs / memory / params computed;
    the extra baselines last, with `-` in the paper's columns."""
    lines = [
        "## Table 1: PASCAL VOC val, ResNet-101",
        "",
        "| Method | SS | SS (paper) | diff | MS+Flip | MS+Flip (paper) | diff "
        "| FLOPs (G) | Memory (MiB) | Params (M) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table1_rows(runs, complexity):
        plus = "" if r["method"] == "ResNet-101" else "+"
        computed = [f"{plus}{'-' if r[key] is None else r[key]}" for key in ("flops_g", "memory_m", "params_m")]
        lines.append(
            f"| {r['method']} | {cell(r['ss'])} | {cell(r['paper_ss'])} | {difference(r['ss'], r['paper_ss'])} | "
            f"{cell(r['ms_flip'])} | {cell(r['paper_ms_flip'])} | {difference(r['ms_flip'], r['paper_ms_flip'])} | "
            + " | ".join(computed) + " |"
        )
    return "\n".join(lines)


def single_and_multi_scale(metrics: dict | None) -> tuple[float | None, float | None]:
    """(single-scale mIoU, multi-scale + flip mIoU) of one metrics.json."""
    if metrics is None:
        return None, None
    settings = metrics["eval"]
    if is_multi_scale(settings["scales"], settings["flip"]):
        return metrics.get("single_scale", {}).get("mIoU"), metrics["mIoU"]
    return metrics["mIoU"], None


def ranking_markdown(title: str, paper: dict[str, float], runs: dict[str, dict]) -> str:
    """Tables 3 and 4: the paper's list (multi-scale + flip), our runs' mIoU beside the
    EMANet rows; a run evaluated single scale only is shown marked "(SS)"."""
    lines = [f"## {title}", "", "| Method | mIoU (paper) | mIoU (ours) | diff |", "|---|---|---|---|"]
    for r in ranking_rows(paper, runs):
        mark = " (SS)" if r["ours_protocol"] == "ss" else ""
        lines.append(f"| {r['method']} | {r['paper_mIoU']:.1f} | {cell(r['mIoU'])}{mark} | "
                     f"{difference(r['mIoU'], r['paper_mIoU'])} |")
    return "\n".join(lines)


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


def ranking_rows(paper: dict[str, float], runs: dict[str, dict]) -> list[dict]:
    """Table 3 or 4 as records: the paper's mIoU, ours (multi-scale + flip, else single
    scale, said in ``ours_protocol``)."""
    rows = []
    for method, value in paper.items():
        single, multi = single_and_multi_scale(runs.get(method))
        ours, protocol = (multi, "ms_flip") if multi is not None else (single, "ss" if single is not None else "")
        rows.append({"method": method, "paper_mIoU": value, "mIoU": ours, "ours_protocol": protocol})
    return rows


def records_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def comparison_chart(title: str, groups: list[tuple[str, list[tuple[str, float | None, bool]]]],
                     bar_length: int = 360) -> Image.Image:
    """Horizontal bars, one group per method, one bar per (label, mIoU, is the paper's)
    with its value written beside it: ours blue, the paper's grey, "-" where there is none.
    The axis starts below the lowest value, so that differences of a point stay visible."""
    typeface = font(12)
    values = [value for _, bars in groups for _, value, _ in bars if value is not None]
    low = 10 * int(min(values) // 10) - 10 if values else 0
    low = max(low, 0)
    high = 10 * -int(-max(values) // 10) if values else 100
    high = max(high, low + 10)
    bar_height, gap = 16, 10
    labels = [f"{method}, {label}" for method, bars in groups for label, _, _ in bars]
    label_width = max(text_size(label, typeface)[0] for label in labels)
    title_width, title_height = text_size(title, typeface)
    left = PAD + label_width + 8
    top = PAD + title_height + 10
    rows = sum(len(bars) for _, bars in groups)
    axis_y = top + rows * bar_height + gap * len(groups)
    width = max(left + bar_length + 8 + text_size("100.00", typeface)[0], PAD + title_width) + PAD
    height = axis_y + 24 + PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, fill="black", font=typeface)
    y = top
    for method, bars in groups:
        for label, value, is_paper in bars:
            text = f"{method}, {label}"
            draw.text((left - 8 - text_size(text, typeface)[0], y + 2), text, fill="black", font=typeface)
            if value is None:
                draw.text((left + 4, y + 2), "-", fill="gray", font=typeface)
            else:
                length = max(1, round((value - low) / (high - low) * bar_length))
                draw.rectangle([left, y + 1, left + length - 1, y + bar_height - 2],
                               fill=PAPER_COLOUR if is_paper else BAR_COLOUR)
                draw.text((left + length + 6, y + 2), cell(value), fill="black", font=typeface)
            y += bar_height
        y += gap
    draw.line([(left, top), (left, axis_y)], fill="black")
    draw.line([(left, axis_y), (left + bar_length, axis_y)], fill="black")
    for tick in range(low, high + 1, 10):
        x = left + round((tick - low) / (high - low) * bar_length)
        draw.line([(x, axis_y), (x, axis_y + 3)], fill="black")
        draw.text((x - text_size(str(tick), typeface)[0] // 2, axis_y + 5), str(tick), fill="black", font=typeface)
    return image


def write_table_files(stem: Path, markdown: str, rows: list[dict], chart: Image.Image) -> list[Path]:
    """STEM.md, STEM.csv and STEM.png, each written atomically."""
    paths = [stem.with_suffix(suffix) for suffix in (".md", ".csv", ".png")]
    atomic_write(paths[0], lambda temp: Path(temp).write_text(markdown + "\n"))
    atomic_write(paths[1], lambda temp: Path(temp).write_text(records_csv(rows)))
    atomic_write(paths[2], lambda temp: chart.save(temp, format="PNG"))
    return paths


def write_table1(runs: dict[str, dict], complexity: Sequence[dict], directory: Path) -> list[Path]:
    """table1.{md,csv,png} in ``directory``; the chart shows mIoU, ours beside the paper's."""
    rows = table1_rows(runs, complexity)
    # The backbone's row holds complexity only: neither the paper nor a run gives it an mIoU.
    groups = [(row["method"], [("SS", row["ss"], False), ("SS paper", row["paper_ss"], True),
                               ("MS+flip", row["ms_flip"], False), ("MS+flip paper", row["paper_ms_flip"], True)])
              for row in rows if row["method"] in TABLE1_ROWS.values()]
    chart = comparison_chart("Table 1: PASCAL VOC val mIoU (%), ResNet-101; grey: the paper's", groups)
    return write_table_files(Path(directory) / "table1", table1_markdown(runs, complexity), rows, chart)


def write_ranking_table(number: int, runs: dict[str, dict], directory: Path) -> list[Path]:
    """table<number>.{md,csv,png} (Table 3 or 4) in ``directory``."""
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


@dataclass(frozen=True)
class BeyondRow:
    """A row of the table beyond the paper: a network on a benchmark, trained here from an
    experiment, or someone's published weights (``imported``) evaluated here; and the
    mIoU others published for it, (source, SS, MS+flip)."""

    benchmark: str
    network: str
    experiment: str
    imported: bool
    references: tuple[tuple[str, float | None, float | None], ...]

    @property
    def weights(self) -> str:
        return "published, evaluated here" if self.imported else "trained here"


MMSEG_R101_769 = ("mmsegmentation R-101-D8 769x769 80k", 79.62, 81.00)
MMSEG_R50_769 = ("mmsegmentation R-50-D8 769x769 80k", 79.33, 80.49)
MMSEG_R101_512x1024 = ("mmsegmentation R-101-D8 512x1024 80k", 79.10, 81.21)
MMSEG_R50_512x1024 = ("mmsegmentation R-50-D8 512x1024 80k", 77.59, 79.44)
BEYOND_ROWS = (
    BeyondRow("Cityscapes val", "EMANet(512), ResNet-101", "cityscapes_emanet512", False,
              (("the authors' release README", 79.79, None), MMSEG_R101_512x1024)),
    BeyondRow("Cityscapes val", "EMANet(512), ResNet-50", "cityscapes_r50_emanet512", False, (MMSEG_R50_512x1024,)),
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-101-D8 769x769", "cityscapes_mmseg_r101", False,
              (MMSEG_R101_769,)),
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-101-D8 769x769", "cityscapes_mmseg_r101", True,
              (MMSEG_R101_769,)),
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-50-D8 769x769", "cityscapes_mmseg_r50", False,
              (MMSEG_R50_769,)),
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-50-D8 769x769", "cityscapes_mmseg_r50", True,
              (MMSEG_R50_769,)),
    # Their 512x1024 models: the published weights, each evaluated under the experiment of
    # its own recipe (training them is `python train.py experiment=...`, not part of this table).
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-101-D8 512x1024", "cityscapes_mmseg_r101_512x1024", True,
              (MMSEG_R101_512x1024,)),
    BeyondRow("Cityscapes val", "mmsegmentation's EMANet, R-50-D8 512x1024", "cityscapes_mmseg_r50_512x1024", True,
              (MMSEG_R50_512x1024,)),
    BeyondRow("ADE20K val", "EMANet(512), ResNet-101", "ade20k_emanet512", False, ()),
)
BEYOND_KEYS = {(row.experiment, row.imported) for row in BEYOND_ROWS}
# The experiments reproduce_paper.py trains for the table (published weights are imported by hand).
BEYOND_EXPERIMENTS = tuple(dict.fromkeys(row.experiment for row in BEYOND_ROWS if not row.imported))


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
    """beyond.{md,csv,png} in ``directory``: ours blue, the references grey."""
    groups = []
    for row in BEYOND_ROWS:
        ss, ms = single_and_multi_scale(runs.get((row.experiment, row.imported)))
        bars = [(f"{row.weights} SS", ss, False), (f"{row.weights} MS+flip", ms, False)]
        for source, reference_ss, reference_ms in row.references:
            bars += [(f"{source} SS", reference_ss, True), (f"{source} MS+flip", reference_ms, True)]
        groups.append((f"{row.benchmark}, {row.network}", bars))
    chart = comparison_chart("Beyond the paper: val mIoU (%); grey: published by others", groups)
    return write_table_files(Path(directory) / "beyond", beyond_markdown(runs), beyond_rows(runs), chart)
