"""Speed and memory benchmarks; each prints a table and keeps its measurement as a JSON line.

A measurement goes to a run directory, runs/benchmarks/<date>/ (--out DIR to choose):
benchmarks.jsonl and the tables of what was measured there, benchmarks.md. --record
publishes it instead: a line in docs/benchmarks.jsonl and the tables of docs/benchmarks.md
rebuilt, for the numbers the README and the docs quote.

    python scripts/benchmark.py unit  [--sizes 33 65 97 129] [--channels 512] [--device cpu]
    python scripts/benchmark.py train [--variants fp32 bf16_cl bf16_cl_compile] [--preset full|small] [overrides...]
    python scripts/benchmark.py eval  [--variants fp32 bf16_cl] [--images 8] [--preset full|small] [overrides...]
    python scripts/benchmark.py data  [--images 200] [--workers 1 2]
    python scripts/benchmark.py targets [overrides...]
    python scripts/benchmark.py acceptance [--steps 3] [--repeats 3] [--images N] [--preset full|small] [overrides...]
    python scripts/benchmark.py tables

``unit``: forward and forward+backward time of the EMA unit, the non-local block and a
3x3 convolution of the same width C on C x S x S feature maps, with the memory each keeps
for backward (peak GPU memory on a GPU), and how each grows with N = S^2, in NCHW and in
channels_last (NHWC) layout.

``train``: training-step throughput (images/s) and peak memory for a config: preset
``full`` (the default on a GPU) is EMANet(512), ResNet-101, OS8, 513 crops, batch 16
(voc_emanet512 without pretrained weights); ``small`` (the default on a CPU) the demo
network at 129 crops, batch 8. With the FLOPs of one step (torch.utils.flop_counter)
it reports the achieved TFLOP/s and, on a known GPU, the fraction of its bf16 peak.
Variants: ``fp32`` (NCHW), ``bf16_cl`` (bfloat16 autocast, channels_last),
``bf16_cl_compile`` (the same under torch.compile) and, when asked, ``fp32_cl``.

``eval``: images/s of the evaluator, single scale and multi-scale + flip, over images of
VOC's usual sizes, in float32 and in bfloat16 with channels_last (``eval.amp``); same
presets as ``train``.

``targets``: the TFLOP/s that the GPU targets (150 training images/s, MS+flip over VOC
val in 3 minutes) require of EMANet(512) R101, from FLOPs counted on the meta device.

``acceptance``: what only a GPU can check (emanet.engine.acceptance): CUDA logits against
CPU logits, cudnn.benchmark's algorithms against cuDNN's defaults, bf16 and fp16 training
steps against float32, channels_last and torch.compile against the plain network,
SyncBatchNorm under a one-process NCCL group against BatchNorm, each with its measured
largest difference and tolerance; then training images/s (fp32, bf16_cl, bf16_cl_compile)
and MS+flip evaluation images/s with peak memory. Exit status 1 if a check fails. On a
CPU the demo network at toy sizes, the CUDA-only checks skipped with their reasons.

``tables``: rebuild every table of docs/benchmarks.md from docs/benchmarks.jsonl, e.g.
after adding lines measured on another machine.

``data``: images/s of the VOC training pipeline (Pillow JPEG decode, label PNG decode,
the release's augmentation to a 513 crop, ImageNet normalisation, tensor conversion) on
500x375 JPEGs written to a temporary folder, in one process and through a DataLoader
with N workers.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from emanet.benchmark_records import (
    Column,
    append_record,
    benchmark_run_dir,
    demo_table,
    machine_cell,
    new_record,
    rebuild_table,
    records,
    rows_table,
    write_record,
)
from emanet.cli import compose_config
from emanet.data.classes import VOC_CLASSES
from emanet.data.palette import save_label_png
from emanet.data.segmentation import SegmentationDataset
from emanet.data.transforms import height_width, seed_transform, train_transform
from emanet.engine import acceptance
from emanet.engine.amp import AmpSettings
from emanet.engine.evaluate import eval_inference, evaluation_settings
from emanet.engine.evaluator import evaluate
from emanet.engine.optim import build_optimizer
from emanet.engine.runtime import configure_runtime
from emanet.engine.train import train_step
from emanet.io import atomic_write
from emanet.models.baseline_heads import NonLocalBlock
from emanet.models.ema import EMAUnit
from emanet.models.segmentor import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from complexity import saved_activation_bytes  # noqa: E402

RELEASE_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def write_voc_like_images(root: Path, count: int, width: int = 500, height: int = 375) -> None:
    """JPEGs with smooth gradients, edges and mild noise (closer to photos than pure noise,
    which decodes far slower), palette PNG labels, and a split list."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    ys, xs = np.mgrid[0:height, 0:width]
    for index in range(count):
        base = rng.integers(0, 256, 3)
        image = (base + 0.3 * xs[..., None] + 0.2 * ys[..., None]) % 256
        cx, cy, r = rng.integers(50, 450), rng.integers(50, 325), rng.integers(30, 120)
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 < r**2
        image[inside] = rng.integers(0, 256, 3)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{index:06d}.jpg", quality=90)
        label = np.where(inside, rng.integers(1, 21), 0).astype(np.uint8)
        save_label_png(label, root / "SegmentationClass" / f"{index:06d}.png")
    ids = "".join(f"{index:06d}\n" for index in range(count))
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text(ids)


def time_single_process(dataset: SegmentationDataset, passes: int = 2) -> float:
    dataset[0]  # warm-up
    start = time.perf_counter()
    for _ in range(passes):
        for index in range(len(dataset)):
            dataset[index]
    return passes * len(dataset) / (time.perf_counter() - start)


def time_loader(dataset: SegmentationDataset, workers: int, batch_size: int = 16, passes: int = 2) -> float:
    loader = DataLoader(
        dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, num_workers=workers,
        persistent_workers=True, drop_last=True,
    )
    # One whole untimed pass starts the workers; stopping after one batch would leave
    # prefetched batches that the next pass decodes and discards inside the timing.
    for _ in loader:
        pass
    start, images = time.perf_counter(), 0
    for _ in range(passes):
        for batch in loader:
            images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def data_benchmark(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)  # per-core numbers: one process, one core
    cv2.setNumThreads(1)
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        write_voc_like_images(root, args.images)
        dataset = SegmentationDataset(
            root, "train", VOC_CLASSES, transform=train_transform(513, RELEASE_SCALES)
        )
        seed_transform(dataset.transform, 0)
        rows.append({"workers": "main process", "images_per_second": round(time_single_process(dataset), 1)})
        for workers in args.workers:
            rows.append({"workers": workers, "images_per_second": round(time_loader(dataset, workers), 1)})
    for row in rows:
        print(f"{row['workers']!s:>14}: {row['images_per_second']:7.1f} images/s")
    record(args, "data", {"images": args.images, "image_size": "500x375", "crop": 513, "rows": rows})


# ------------------------------------------------------------------------------- helpers


def record(args: argparse.Namespace, benchmark: str, result: dict) -> None:
    """Keep ``result`` (with a list of ``rows``). With ``--record``: append it to
    docs/benchmarks.jsonl and rebuild the benchmark's tables in docs/benchmarks.md, one line
    per row of every record. Otherwise in the run directory, so that a trial at toy sizes
    leaves the published numbers and the checkout alone."""
    # The command that measures it again: where the result went does not change that.
    command = "python scripts/benchmark.py " + " ".join(arg for arg in sys.argv[1:] if arg != "--record")
    if args.record:
        append_record(benchmark, command, result)
        rebuild_tables(benchmark)
        print("recorded in docs/benchmarks.jsonl and docs/benchmarks.md")
        return
    run_dir = args.out or benchmark_run_dir()
    write_record(new_record(benchmark, command, result), run_dir / RUN_RECORDS)
    write_run_tables(run_dir)
    print(f"results in {run_dir} (--record publishes them in docs/benchmarks.jsonl and docs/benchmarks.md)")


# The records and tables of a run directory.
RUN_RECORDS = "benchmarks.jsonl"
RUN_TABLES = "benchmarks.md"


def write_run_tables(run_dir: Path) -> None:
    """The run directory's benchmarks.md: the tables of every benchmark measured there."""
    sections = []
    for benchmark, table in TABLES.items():
        measured = records(benchmark, run_dir / RUN_RECORDS)
        if measured:
            sections.append(f"## {benchmark}\n\n{table(measured)}\n")
        if measured and benchmark == "unit" and any(unit_growth(record["rows"]) for record in measured):
            sections.append(f"## unit growth\n\n{unit_growth_table(measured)}\n")
    text = "\n".join(sections)
    atomic_write(run_dir / RUN_TABLES, lambda temp: Path(temp).write_text(text))


def rebuild_tables(benchmark: str) -> None:
    rebuild_table(benchmark, TABLES[benchmark])
    if benchmark == "unit":
        rebuild_table("unit", unit_growth_table, section="unit-growth")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``function()`` over ``repeats`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def positive_int(text: str) -> int:
    """An argparse type: a count of at least 1 (argparse names the option in its error)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# The paper's model at full size, or the demo network, which a CPU runs in seconds.
PRESETS = {
    "full": ["experiment=voc_emanet512", "model.backbone.pretrained=null"],
    "small": ["experiment=demo", "eval.mode=whole"],
}


def benchmark_config(args: argparse.Namespace, device: torch.device, sizes: dict[str, list[str]]) -> DictConfig:
    """The train.py config of ``args.preset`` (default: full on a GPU, small on a CPU) with the
    preset's ``sizes`` and the user's overrides on top."""
    preset = args.preset or ("full" if device.type == "cuda" else "small")
    return compose_config("train", [*PRESETS[preset], *sizes[preset], *args.overrides])


def model_name(cfg: DictConfig) -> str:
    return f"{cfg.name} R{cfg.model.backbone.depth} OS{cfg.model.backbone.output_stride}"


# -------------------------------------------------------------------------------- unit


def unit_builders(channels: int) -> dict[str, Callable[[], nn.Module]]:
    return {
        "EMA unit": lambda: EMAUnit(channels, num_bases=64, train_stages=3, eval_stages=3),
        "non-local": lambda: NonLocalBlock(channels),
        "3x3 conv": lambda: nn.Conv2d(channels, channels, 3, padding=1, bias=False),
    }


# How the unit benchmark lays out the feature maps and weights (runtime.channels_last).
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
LAYOUT_NAMES = {"contiguous": "NCHW", "channels_last": "NHWC"}


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


def power_law_exponent(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(N), N = S^2: 1 for linear growth in N,
    2 for quadratic."""
    log_n = [math.log(size * size) for size in sizes]
    log_v = [math.log(value) for value in values]
    mean_n, mean_v = statistics.fmean(log_n), statistics.fmean(log_v)
    covariance = sum((n - mean_n) * (v - mean_v) for n, v in zip(log_n, log_v, strict=True))
    return covariance / sum((n - mean_n) ** 2 for n in log_n)


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


def growth_of(sizes: list[int], values: list[float]) -> tuple[float | None, float | None]:
    """(last / first value, power-law exponent in N); None for both if a value rounded to 0."""
    if min(values) <= 0:
        return None, None
    return round(values[-1] / values[0], 1), round(power_law_exponent(sizes, values), 2)


def unit_benchmark(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    rows = []
    for format_name in args.memory_formats:
        layout = LAYOUT_NAMES[format_name]
        for size in args.sizes:
            for name, build in unit_builders(args.channels).items():
                forward_seconds, train_seconds, memory = measure_unit(
                    build, args.channels, size, device, args.repeats, MEMORY_FORMATS[format_name]
                )
                rows.append({
                    "memory_format": format_name, "size": size, "module": name,
                    "forward_ms": round(1000 * forward_seconds, 2),
                    "forward_backward_ms": round(1000 * train_seconds, 2), "memory_mib": round(memory / 2**20, 1),
                })
                print(f"{layout} {size:>4} {name:>10}: forward {rows[-1]['forward_ms']:9.2f} ms, forward+backward "
                      f"{rows[-1]['forward_backward_ms']:9.2f} ms, memory {rows[-1]['memory_mib']:8.1f} MiB")
    for size in args.sizes:
        for format_name in args.memory_formats:
            by_name = {r["module"]: r for r in rows if r["size"] == size and r["memory_format"] == format_name}
            ema, conv = by_name["EMA unit"]["forward_backward_ms"], by_name["3x3 conv"]["forward_backward_ms"]
            non_local = by_name["non-local"]["forward_backward_ms"]
            print(f"{LAYOUT_NAMES[format_name]} {size:>4}: EMA / 3x3 conv {ema / conv:.2f}x, "
                  f"non-local / EMA {non_local / ema:.1f}x")
        if len(args.memory_formats) > 1:
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

    record(args, "unit", {"channels": args.channels, "memory": memory_note, "rows": rows})


# ------------------------------------------------------------------------------- train

# Dense bfloat16 tensor-core peaks from NVIDIA's datasheets; the first name contained in
# torch.cuda.get_device_name() counts, so the specific variants come first.
GPU_BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0,
}
# runtime.amp + runtime.channels_last, and whether to torch.compile (runtime.compile).
TRAIN_VARIANTS = {
    "fp32": (AmpSettings(), False),
    "fp32_cl": (AmpSettings(channels_last=True), False),
    "bf16_cl": (AmpSettings(torch.bfloat16, channels_last=True), False),
    "bf16_cl_compile": (AmpSettings(torch.bfloat16, channels_last=True), True),
}

DEFAULT_VARIANTS = ["fp32", "bf16_cl", "bf16_cl_compile"]  # fp32_cl on request (CPUs: see docs/benchmarks.md)


def bf16_peak_tflops(gpu_name: str) -> float | None:
    return next((peak for name, peak in GPU_BF16_PEAK_TFLOPS.items() if name in gpu_name), None)


def train_step_flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """FLOPs (2 per multiply-accumulate) of one forward + backward pass."""
    with FlopCounterMode(display=False) as counter:
        outputs = model(images)  # (logits, aux_logits) with an auxiliary head
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else outputs
        sum(F.cross_entropy(logits, labels, ignore_index=255) for logits in outputs).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def meta_model(cfg: DictConfig) -> nn.Module:
    """The configured model on PyTorch's meta device: shapes without storage, for counting FLOPs."""
    with torch.device("meta"):
        return build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)


def config_train_step_flops(cfg: DictConfig, batch: int) -> float:
    """FLOPs of one training step of the configured model on ``batch`` crops, counted on the
    meta device (no memory, no data)."""
    height, width = height_width(cfg.dataset.crop_size)
    classes = cfg.dataset.num_classes
    with torch.device("meta"):
        images, labels = torch.randn(batch, 3, height, width), torch.randint(0, classes, (batch, height, width))
        return train_step_flops(meta_model(cfg).train(), images, labels)


def time_train_step(
    cfg: DictConfig, device: torch.device, amp: AmpSettings, compile_network: bool, repeats: int
) -> tuple[float, float | None]:
    """Median seconds of the trainer's step (emanet.engine.train.train_step: forward, loss,
    finiteness check, backward, SGD update) on one random batch, and the peak GPU memory (GiB)."""
    batch, classes = cfg.schedule.batch_size, cfg.dataset.num_classes
    height, width = height_width(cfg.dataset.crop_size)
    torch.manual_seed(0)
    model = build_model(cfg.model, classes, load_pretrained=False).to(device).train()
    if amp.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, height, width, device=device)
    micro_batches = [{"image": images, "label": torch.randint(0, classes, (batch, height, width), device=device)}]
    optimizer = build_optimizer(model, cfg.optim)
    if compile_network:
        # Forget what earlier compiles of this code saw: another input size there makes dynamo
        # compile this one for symbolic sizes, which the heads' interpolations do not support.
        torch._dynamo.reset()
    network = torch.compile(model) if compile_network else model

    def step():
        train_step(
            network, micro_batches, optimizer, device, cfg.dataset.ignore_index, cfg.loss.normalization, amp,
            aux_weight=cfg.model.aux.weight,
        )

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, repeats, warmup=3 if compile_network else 1)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, memory


def measure_train(
    cfg: DictConfig, device: torch.device, variants: list[str], repeats: int, flops: float
) -> list[dict]:
    """A row per variant: images/s, TFLOP/s (of ``flops`` per step), peak memory and fraction
    of the GPU's bf16 peak."""
    batch = cfg.schedule.batch_size
    peak = bf16_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rows = []
    for variant in variants:
        seconds, memory = time_train_step(cfg, device, *TRAIN_VARIANTS[variant], repeats)
        tflops = flops / seconds / 1e12
        rows.append({
            "variant": variant, "images_per_second": round(batch / seconds, 2), "tflops": round(tflops, 2),
            "peak_memory_gib": round(memory, 2) if memory is not None else None,
            "fraction_of_bf16_peak": round(tflops / peak, 3) if peak else None,
        })
        row = rows[-1]
        print(f"{variant:>16}: {row['images_per_second']:8.2f} images/s, {row['tflops']:7.2f} TFLOP/s, "
              f"peak memory {row['peak_memory_gib']} GiB, fraction of bf16 peak {row['fraction_of_bf16_peak']}",
              flush=True)
    return rows


def train_benchmark(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    cfg = benchmark_config(args, device, {
        "full": ["dataset.crop_size=513", "schedule.batch_size=16"],
        "small": ["dataset.crop_size=129", "schedule.batch_size=8"],
    })
    configure_runtime(cfg)  # seed, threads and cuDNN autotuning as the trainer has them
    flops = config_train_step_flops(cfg, cfg.schedule.batch_size)
    rows = measure_train(cfg, device, args.variants, args.repeats, flops)
    settings = {
        "model": model_name(cfg), "crop": cfg.dataset.crop_size, "batch": cfg.schedule.batch_size,
        "gflops_per_step": round(flops / 1e9, 1),
        "cudnn_benchmark": cfg.runtime.cudnn_benchmark,
    }
    record(args, "train", {**settings, "rows": rows})


# -------------------------------------------------------------------------------- eval


EVAL_VARIANTS = {name: amp for name, (amp, compile_network) in TRAIN_VARIANTS.items() if not compile_network}
VOC_IMAGE_SIZES = [(375, 500), (500, 375), (333, 500), (500, 334)]  # (height, width), the commonest in VOC


def voc_sized_batches(count: int, num_classes: int) -> list[dict]:
    """``count`` single-image batches of random images and labels, cycling VOC's usual sizes."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for index in range(count):
        height, width = VOC_IMAGE_SIZES[index % len(VOC_IMAGE_SIZES)]
        batches.append({
            "image": torch.randn(1, 3, height, width, generator=generator),
            "label": torch.randint(0, num_classes, (1, height, width), generator=generator),
            "id": [f"{index:06d}"],
        })
    return batches


EVAL_PROTOCOLS = ("single scale", "MS+flip")


def measure_eval(
    cfg: DictConfig, device: torch.device, variants: list[str], images: int, protocols=EVAL_PROTOCOLS
) -> list[dict]:
    """Times the evaluator itself (host-to-device copy, every scale and flip, float32
    probability averaging, argmax, confusion matrix) over VOC-sized images, after one
    pass over each image size: a row per variant and protocol, with the peak GPU memory."""
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False).to(device).eval()
    batches = voc_sized_batches(images, cfg.dataset.num_classes)
    inference = eval_inference(cfg)
    settings = {"single scale": ([1.0], False), "MS+flip": (list(cfg.eval.scales), True)}
    rows = []
    with evaluation_settings(model, cfg):  # eval output stride and cuDNN autotuning, as evaluate.py
        for variant in variants:
            amp = EVAL_VARIANTS[variant]
            model.to(memory_format=torch.channels_last if amp.channels_last else torch.contiguous_format)
            for protocol in protocols:
                scales, flip = settings[protocol]

                def run(batches, scales=scales, flip=flip, amp=amp):
                    evaluate(model, batches, cfg.dataset.num_classes, scales, flip, device, progress=False,
                             inference=inference, amp=amp)

                run(batches[: len(VOC_IMAGE_SIZES)])  # warm-up: every size once
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = timed(lambda run=run: run(batches), device, repeats=1, warmup=0)
                memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                rows.append({"variant": variant, "protocol": protocol, "scales": scales, "flip": flip,
                             "images_per_second": round(len(batches) / seconds, 2),
                             "peak_memory_gib": round(memory, 2) if memory is not None else None})
                print(f"{variant:>8} {protocol:>13}: {rows[-1]['images_per_second']:8.2f} images/s "
                      f"(1,449 VOC val images in {1449 / rows[-1]['images_per_second'] / 60:.1f} min)", flush=True)
    return rows


def eval_benchmark(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    cfg = benchmark_config(args, device, {"full": [], "small": []})
    rows = measure_eval(cfg, device, args.variants, args.images)
    record(args, "eval", {"model": model_name(cfg), "image_size": "VOC sizes", "images": args.images,
                          "mode": cfg.eval.mode, "cudnn_benchmark": cfg.eval.cudnn_benchmark, "rows": rows})


# ----------------------------------------------------------------------------- targets

TRAIN_TARGET_IMAGES_PER_SECOND = 150  # the paper's 30k x 16-image VOC schedule in under an hour
EVAL_TARGET_IMAGES_PER_SECOND = 1449 / 180  # VOC val, multi-scale + flip, in under 3 minutes


def forward_flops(model: nn.Module, images: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    return float(counter.get_total_flops())


def target_row(workload: str, flops_per_image: float, images_per_second: float) -> dict:
    needed = flops_per_image * images_per_second / 1e12
    return {
        "workload": workload, "tflop_per_image": round(flops_per_image / 1e12, 3),
        "target_images_per_second": round(images_per_second, 2), "tflops_needed": round(needed, 1),
        "fraction_of_bf16_peak": {gpu: round(needed / peak, 3) for gpu, peak in GPU_BF16_PEAK_TFLOPS.items()},
    }


def targets_benchmark(args: argparse.Namespace) -> None:
    """What the GPU targets ask of the hardware: FLOPs per image of EMANet(512) R101 (counted
    on the meta device, so on any machine in seconds) times the target rate, as TFLOP/s and
    as a fraction of each known GPU's bf16 peak."""
    cfg = compose_config("train", [*PRESETS["full"], *args.overrides])
    crop = cfg.dataset.crop_size
    train_flops = config_train_step_flops(cfg, batch=1)
    model = meta_model(cfg).eval()
    with torch.device("meta"):
        passes = 2 if cfg.eval.flip else 1
        eval_flops = sum(
            passes * forward_flops(model, torch.randn(1, 3, round(375 * scale), round(500 * scale)))
            for scale in cfg.eval.scales
        )
    rows = [
        target_row(f"training, {crop}x{crop} crop, forward+backward", train_flops, TRAIN_TARGET_IMAGES_PER_SECOND),
        target_row(f"evaluation, 500x375, {passes * len(cfg.eval.scales)} passes (MS+flip)", eval_flops,
                   EVAL_TARGET_IMAGES_PER_SECOND),
    ]
    for row in rows:
        print(f"{row['workload']}: {row['tflop_per_image']} TFLOP per image x {row['target_images_per_second']} "
              f"images/s = {row['tflops_needed']} TFLOP/s ({row['fraction_of_bf16_peak']['H100']:.1%} of an "
              "H100's bf16 peak)")
    record(args, "targets", {"model": model_name(cfg), "rows": rows})


# --------------------------------------------------------------------------- acceptance

# The measured configuration: EMANet(512) R101 at the training crop and batch on a GPU;
# the demo network at toy sizes on a CPU, so that CI runs the same code in seconds.
ACCEPTANCE_SIZES = {
    "full": ["dataset.crop_size=513", "schedule.batch_size=16"],
    "small": ["dataset.crop_size=33", "schedule.batch_size=2", "eval.scales=[0.5,1.0]"],
}
CPU_UNMEASURED = {"bf16_cl_compile": "not measured on a CPU: inductor spends minutes compiling there"}


def acceptance_benchmark(args: argparse.Namespace) -> None:
    """The checks of emanet.engine.acceptance, then training and MS+flip evaluation speed;
    exit status 1 if a check fails."""
    start = time.perf_counter()
    device = torch.device(args.device)
    cfg = benchmark_config(args, device, ACCEPTANCE_SIZES)
    configure_runtime(cfg)  # seed, threads and cuDNN autotuning (on, runtime.cudnn_benchmark) as the trainer
    print(f"acceptance on {device}: {model_name(cfg)}, checks on {acceptance.CHECK_BATCH} crops of "
          f"{cfg.dataset.crop_size}, {args.steps} training steps", flush=True)
    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {line}", flush=True)

    checks = acceptance.run_checks(cfg, device, args.steps, progress)
    unmeasured = CPU_UNMEASURED if device.type == "cpu" else {}
    variants = [variant for variant in DEFAULT_VARIANTS if variant not in unmeasured]
    progress(f"measuring training speed: {cfg.schedule.batch_size} crops of {cfg.dataset.crop_size}")
    flops = config_train_step_flops(cfg, cfg.schedule.batch_size)
    train_rows = measure_train(cfg, device, variants, args.repeats, flops)
    images = args.images or (16 if device.type == "cuda" else 2)
    progress(f"measuring MS+flip evaluation speed: {images} VOC-sized images")
    eval_rows = measure_eval(cfg, device, list(EVAL_VARIANTS_MEASURED), images, protocols=("MS+flip",))
    result = {
        "model": model_name(cfg), "passed": acceptance.all_passed(checks),
        "check_crop": cfg.dataset.crop_size, "check_batch": acceptance.CHECK_BATCH, "steps": args.steps,
        "crop": cfg.dataset.crop_size, "batch": cfg.schedule.batch_size, "eval_images": images,
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "wall_seconds": round(time.perf_counter() - start, 1),
        "checks": [check.as_dict() for check in checks], "not_measured": unmeasured,
        "train_rows": train_rows, "eval_rows": eval_rows,
    }
    print()
    print(acceptance.checks_table(checks))
    print()
    print(measurements_table(result))
    verdict = "PASS" if result["passed"] else "FAIL"
    print(f"\nacceptance: {verdict} ({check_counts(result)}) in {result['wall_seconds']} s")
    record(args, "acceptance", result)
    if not result["passed"]:
        sys.exit(1)


EVAL_VARIANTS_MEASURED = ("fp32", "bf16_cl")


def check_counts(result: dict) -> str:
    counts = {status: sum(check["status"] == status for check in result["checks"])
              for status in (acceptance.PASS, acceptance.FAIL, acceptance.SKIP)}
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def measurements_table(result: dict) -> str:
    """Plain text: images/s and peak memory of each measurement, against the GPU targets."""
    lines = [f"{'measurement':<34}{'images/s':>10}{'peak GiB':>10}  target (one H100/H200, EMANet(512) R101)"]
    for row in result["train_rows"]:
        target = f">= {TRAIN_TARGET_IMAGES_PER_SECOND} images/s" if row["variant"] == "bf16_cl" else ""
        lines.append(f"{'train ' + row['variant']:<34}{row['images_per_second']:>10}"
                     f"{row['peak_memory_gib'] or '-':>10}  {target}")
    for variant, reason in result["not_measured"].items():
        lines.append(f"{'train ' + variant:<34}{'-':>10}{'-':>10}  {reason}")
    for row in result["eval_rows"]:
        minutes = 1449 / row["images_per_second"] / 60
        lines.append(f"{'eval ' + row['variant'] + ' ' + row['protocol']:<34}{row['images_per_second']:>10}"
                     f"{row['peak_memory_gib'] or '-':>10}  >= {EVAL_TARGET_IMAGES_PER_SECOND:.2f} images/s "
                     f"(VOC val in {minutes:.1f} min; target 3)")
    return "\n".join(lines)


def acceptance_table(records: list[dict]) -> str:
    """A line per acceptance run, and a line saying so while no GPU has run it."""
    def speeds(rows: list[dict], variants) -> str:
        measured = {row["variant"]: row["images_per_second"] for row in rows}
        return " / ".join(str(measured.get(variant, "-")) for variant in variants)

    lines = [
        "| date | machine | model | crop, batch | checks | train images/s fp32 / bf16_cl / bf16_cl_compile "
        "| peak train memory (GiB) | MS+flip images/s fp32 / bf16_cl | wall time (s) |",
        "|---" * 9 + "|",
    ]
    for r in records:
        peaks = [row["peak_memory_gib"] for row in r["train_rows"] if row["peak_memory_gib"] is not None]
        lines.append(
            f"| {r['date'][:10]} | {machine_cell(r)} | {r['model']} | {r['crop']}, {r['batch']} "
            f"| {'PASS' if r['passed'] else 'FAIL'} ({check_counts(r)}) | {speeds(r['train_rows'], DEFAULT_VARIANTS)} "
            f"| {max(peaks) if peaks else '-'} | {speeds(r['eval_rows'], EVAL_VARIANTS_MEASURED)} "
            f"| {r['wall_seconds']} |"
        )
    if not any(r["machine"].get("gpu") for r in records):
        lines.append("| - | one H100 or H200 | voc_emanet512 R101 OS8 | 513, 16 | not measured on a GPU yet "
                     "| target: bf16_cl >= 150 | - | target: >= 8.05 | target: < 480 |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- tables
# The columns of each benchmark's table in docs/benchmarks.md: a header and a function of
# the record and one of its rows.

DATA_COLUMNS: list[Column] = [
    ("workers", lambda r, row: row["workers"]),
    ("images/s", lambda r, row: row["images_per_second"]),
    ("command", lambda r, row: f"`{r['command']}`"),
]


def row_memory_format(row: dict) -> str:
    return row.get("memory_format", "contiguous")  # records from before the option: NCHW


def versus_conv(r: dict, row: dict) -> str:
    conv = next(
        c for c in r["rows"]
        if c["module"] == "3x3 conv" and c["size"] == row["size"]
        and row_memory_format(c) == row_memory_format(row)
    )
    return f"{row['forward_backward_ms'] / conv['forward_backward_ms']:.2f}x"


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


def ratio_cell(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio}x"


def value_cell(value: float | None) -> object:
    return "-" if value is None else value


def unit_growth_table(records: list[dict]) -> str:
    """The growth of each module with N, for every unit record measured at several sizes."""
    return rows_table(records, GROWTH_COLUMNS, rows_of=lambda record: unit_growth(record["rows"]))


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

TABLE_COLUMNS = {
    "data": DATA_COLUMNS, "unit": UNIT_COLUMNS, "train": TRAIN_COLUMNS, "eval": EVAL_COLUMNS,
    "targets": TARGETS_COLUMNS,
}
# The table of each benchmark, from its records.
TABLES: dict[str, Callable[[list[dict]], str]] = {
    **{name: lambda records, columns=columns: rows_table(records, columns) for name, columns in TABLE_COLUMNS.items()},
    "acceptance": acceptance_table,
}


def tables_benchmark(args: argparse.Namespace) -> None:
    """Rebuild every table from docs/benchmarks.jsonl (after adding lines measured elsewhere)."""
    for benchmark in TABLES:
        rebuild_tables(benchmark)
        print(f"rebuilt the {benchmark} table")
    rebuild_table("demo", demo_table)  # scripts/benchmark_demo.py's records
    print("rebuilt the demo table")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmarks = parser.add_subparsers(dest="benchmark", required=True)
    unit = benchmarks.add_parser("unit", help="EMA unit vs non-local vs 3x3 conv")
    unit.add_argument("--sizes", type=int, nargs="*", default=[33, 65, 97, 129], help="feature map sides S")
    unit.add_argument("--channels", type=int, default=512)
    unit.add_argument("--repeats", type=int, default=3)
    unit.add_argument(
        "--memory-formats", nargs="*", default=list(MEMORY_FORMATS), choices=list(MEMORY_FORMATS),
        help="layouts of the feature maps and weights (runtime.channels_last)",
    )
    unit.add_argument("--device", default=str(default_device()))
    unit.set_defaults(run=unit_benchmark)
    train = benchmarks.add_parser("train", help="training-step throughput")
    train.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(TRAIN_VARIANTS))
    train.add_argument("--repeats", type=int, default=5)
    evaluation = benchmarks.add_parser("eval", help="single-scale and MS+flip evaluation speed")
    evaluation.add_argument(
        "--variants", nargs="*", choices=list(EVAL_VARIANTS),
        default=[variant for variant in DEFAULT_VARIANTS if variant in EVAL_VARIANTS],
    )
    evaluation.add_argument("--images", type=int, default=8, help="VOC-sized images to evaluate")
    for parser_of_config in (train, evaluation):
        parser_of_config.add_argument("--device", default=str(default_device()))
        parser_of_config.add_argument(
            "--preset", choices=list(PRESETS),
            help="full: EMANet(512) R101 OS8 (the default on a GPU); small: the demo network (on a CPU)",
        )
        parser_of_config.add_argument("overrides", nargs="*", help="train.py overrides")
    train.set_defaults(run=train_benchmark)
    evaluation.set_defaults(run=eval_benchmark)
    data = benchmarks.add_parser("data", help="training data pipeline throughput")
    data.add_argument("--images", type=int, default=200, help="how many 500x375 JPEGs to write and read")
    data.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="DataLoader worker counts to time")
    data.set_defaults(run=data_benchmark)
    accepting = benchmarks.add_parser(
        "acceptance", help="GPU acceptance: CUDA/AMP/channels_last/compile/SyncBatchNorm checks, then speed",
    )
    accepting.add_argument("--device", default=str(default_device()))
    accepting.add_argument("--preset", choices=list(PRESETS),
                           help="full: EMANet(512) R101 OS8 (the default on a GPU); small: the demo network (on a CPU)")
    accepting.add_argument("--steps", type=positive_int, default=3, help="training steps of the mixed-precision checks")
    accepting.add_argument("--repeats", type=positive_int, default=3, help="timed training steps per variant")
    accepting.add_argument("--images", type=positive_int,
                           help="VOC-sized images for the MS+flip speed (default 16 on a GPU, 2 on a CPU)")
    accepting.add_argument("overrides", nargs="*", help="train.py overrides")
    accepting.set_defaults(run=acceptance_benchmark)
    targets = benchmarks.add_parser("targets", help="TFLOP/s that the GPU targets require (meta device)")
    targets.add_argument("overrides", nargs="*", help="train.py overrides")
    targets.set_defaults(run=targets_benchmark)
    for measuring in (unit, train, evaluation, data, targets, accepting):
        measuring.add_argument(
            "--record", action="store_true",
            help="publish: append to docs/benchmarks.jsonl and rebuild docs/benchmarks.md's tables",
        )
        measuring.add_argument("--out", type=Path, help="run directory (default: runs/benchmarks/<date>/)")
    tables = benchmarks.add_parser("tables", help="rebuild the tables of docs/benchmarks.md from the JSON lines")
    tables.set_defaults(run=tables_benchmark)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
