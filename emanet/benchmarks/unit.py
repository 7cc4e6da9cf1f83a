"""The EMA unit against the non-local block and a 3x3 convolution of the same width C, on
C x S x S feature maps: forward and forward+backward time, the memory each keeps for
backward (peak GPU memory on a GPU), and how each grows with N = S^2, in NCHW and in
channels_last (NHWC) layout."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch
from torch import nn

from emanet.benchmarks.complexity import saved_activation_bytes
from emanet.benchmarks.measure import timed
from emanet.benchmarks.records import Column, rows_table
from emanet.models.baseline_heads import NonLocalBlock
from emanet.models.ema import EMAUnit

# How the unit benchmark lays out the feature maps and weights (runtime.channels_last).
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
LAYOUT_NAMES = {"contiguous": "NCHW", "channels_last": "NHWC"}


def unit_builders(channels: int) -> dict[str, Callable[[], nn.Module]]:
    return {
        "EMA unit": lambda: EMAUnit(channels, num_bases=64, train_stages=3, eval_stages=3),
        "non-local": lambda: NonLocalBlock(channels),
        "3x3 conv": lambda: nn.Conv2d(channels, channels, 3, padding=1, bias=False),
    }


def measure_unit(
    build: Callable[[], nn.Module], channels: int, size: int, device: torch.device, repeats: int,
    memory_format: torch.memory_format = torch.contiguous_format,
):
    """(forward s, forward+backward s, bytes): peak GPU memory, or on a CPU the activations
    kept for backward. The module lives only in this call, so on a GPU the peak holds no
    module measured before it."""
    module = build().to(device, memory_format=memory_format).train()
    x = torch.randn(1, channels, size, size, device=device).contiguous(memory_format=memory_format)
    x.requires_grad_()

    def forward():
        with torch.no_grad():
            module(x)

    def forward_backward():
        module(x).sum().backward()

    forward_seconds = timed(forward, device, repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_seconds = timed(forward_backward, device, repeats)
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device)
    else:
        with torch.device("meta"):
            memory = saved_activation_bytes(build(), x.detach().to("meta"))
    return forward_seconds, train_seconds, memory


def row_memory_format(row: dict) -> str:
    return row.get("memory_format", "contiguous")  # records from before the option: NCHW


def power_law_exponent(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(N), N = S^2: 1 for linear growth in N,
    2 for quadratic."""
    log_n = [math.log(size * size) for size in sizes]
    log_v = [math.log(value) for value in values]
    mean_n, mean_v = statistics.fmean(log_n), statistics.fmean(log_v)
    covariance = sum((n - mean_n) * (v - mean_v) for n, v in zip(log_n, log_v, strict=True))
    return covariance / sum((n - mean_n) ** 2 for n in log_n)


def growth_of(sizes: list[int], values: list[float]) -> tuple[float | None, float | None]:
    """(last / first value, power-law exponent in N); None for both if a value rounded to 0."""
    if min(values) <= 0:
        return None, None
    return round(values[-1] / values[0], 1), round(power_law_exponent(sizes, values), 2)


def unit_growth(rows: list[dict]) -> list[dict]:
    """For each layout and module measured at two sizes or more: how its forward+backward
    time and its memory grow from the smallest to the largest N, as ratios and as the
    exponent of a power law in N fitted over every size."""
    growth = []
    for layout in dict.fromkeys(row_memory_format(row) for row in rows):
        for module in dict.fromkeys(row["module"] for row in rows):
            measured = sorted(
                (row for row in rows if row_memory_format(row) == layout and row["module"] == module),
                key=lambda row: row["size"],
            )
            sizes = [row["size"] for row in measured]
            if len(set(sizes)) < 2:
                continue
            time_ratio, time_exponent = growth_of(sizes, [row["forward_backward_ms"] for row in measured])
            memory_ratio, memory_exponent = growth_of(sizes, [row["memory_mib"] for row in measured])
            growth.append({
                "memory_format": layout, "module": module, "sizes": f"{sizes[0]} -> {sizes[-1]}",
                "n_ratio": round((sizes[-1] / sizes[0]) ** 2, 1),
                "time_ratio": time_ratio, "time_exponent": time_exponent,
                "memory_ratio": memory_ratio, "memory_exponent": memory_exponent,
            })
    return growth


def ratio_cell(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio}x"


def value_cell(value: float | None) -> object:
    return "-" if value is None else value


def unit_benchmark(
    sizes: Sequence[int], channels: int, repeats: int, memory_formats: Sequence[str], device: torch.device
) -> dict:
    """Every module at every size in every layout, printed as measured with how the EMA unit
    compares and how each grows: the result that ``benchmark.py unit`` records."""
    rows = []
    for format_name in memory_formats:
        layout = LAYOUT_NAMES[format_name]
        for size in sizes:
            for name, build in unit_builders(channels).items():
                forward_seconds, train_seconds, memory = measure_unit(
                    build, channels, size, device, repeats, MEMORY_FORMATS[format_name]
                )
                rows.append({
                    "memory_format": format_name, "size": size, "module": name,
                    "forward_ms": round(1000 * forward_seconds, 2),
                    "forward_backward_ms": round(1000 * train_seconds, 2), "memory_mib": round(memory / 2**20, 1),
                })
                print(f"{layout} {size:>4} {name:>10}: forward {rows[-1]['forward_ms']:9.2f} ms, forward+backward "
                      f"{rows[-1]['forward_backward_ms']:9.2f} ms, memory {rows[-1]['memory_mib']:8.1f} MiB")
    for size in sizes:
        for format_name in memory_formats:
            by_name = {r["module"]: r for r in rows if r["size"] == size and r["memory_format"] == format_name}
            ema, conv = by_name["EMA unit"]["forward_backward_ms"], by_name["3x3 conv"]["forward_backward_ms"]
            non_local = by_name["non-local"]["forward_backward_ms"]
            print(f"{LAYOUT_NAMES[format_name]} {size:>4}: EMA / 3x3 conv {ema / conv:.2f}x, "
                  f"non-local / EMA {non_local / ema:.1f}x")
        if len(memory_formats) > 1:
            fastest = {
                name: min(r["forward_backward_ms"] for r in rows if r["size"] == size and r["module"] == name)
                for name in ("EMA unit", "3x3 conv")
            }
            print(f"     {size:>4}: fastest EMA / fastest 3x3 conv {fastest['EMA unit'] / fastest['3x3 conv']:.2f}x")
    for row in unit_growth(rows):
        print(f"{LAYOUT_NAMES[row['memory_format']]} {row['module']:>10}: S {row['sizes']} (N x{row['n_ratio']}): "
              f"time {ratio_cell(row['time_ratio'])} (~N^{row['time_exponent']}), "
              f"memory {ratio_cell(row['memory_ratio'])} (~N^{row['memory_exponent']})")
    memory_note = "peak GPU memory" if device.type == "cuda" else "activations kept for backward"
    return {"channels": channels, "memory": memory_note, "rows": rows}


# ------------------------------------------------------------------------------- tables


def versus_conv(r: dict, row: dict) -> str:
    conv = next(
        c for c in r["rows"]
        if c["module"] == "3x3 conv" and c["size"] == row["size"]
        and row_memory_format(c) == row_memory_format(row)
    )
    return f"{row['forward_backward_ms'] / conv['forward_backward_ms']:.2f}x"


UNIT_COLUMNS: list[Column] = [
    ("C", lambda r, row: r["channels"]),
    ("layout", lambda r, row: LAYOUT_NAMES[row_memory_format(row)]),
    ("S (N = S^2)", lambda r, row: row["size"]),
    ("module", lambda r, row: row["module"]),
    ("forward (ms)", lambda r, row: row["forward_ms"]),
    ("fwd+bwd (ms)", lambda r, row: row["forward_backward_ms"]),
    ("fwd+bwd vs 3x3 conv", versus_conv),
    ("memory (MiB)", lambda r, row: row["memory_mib"]),
]

GROWTH_COLUMNS: list[Column] = [
    ("C", lambda r, row: r["channels"]),
    ("layout", lambda r, row: LAYOUT_NAMES[row["memory_format"]]),
    ("module", lambda r, row: row["module"]),
    ("S", lambda r, row: row["sizes"]),
    ("N grows", lambda r, row: f"{row['n_ratio']}x"),
    ("fwd+bwd time grows", lambda r, row: ratio_cell(row["time_ratio"])),
    ("time ~ N^", lambda r, row: value_cell(row["time_exponent"])),
    ("memory grows", lambda r, row: ratio_cell(row["memory_ratio"])),
    ("memory ~ N^", lambda r, row: value_cell(row["memory_exponent"])),
]


def unit_table(records: list[dict]) -> str:
    return rows_table(records, UNIT_COLUMNS)


def unit_growth_table(records: list[dict]) -> str:
    """The growth of each module with N, for every unit record measured at several sizes."""
    return rows_table(records, GROWTH_COLUMNS, rows_of=lambda record: unit_growth(record["rows"]))
