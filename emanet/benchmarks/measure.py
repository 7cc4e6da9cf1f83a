"""Training-step and evaluation throughput of a configured model, and the timing they share.

Training: images/s and peak memory of the trainer's own step; with the FLOPs of one step
(torch.utils.flop_counter) the achieved TFLOP/s and, on a known GPU, the fraction of its
bf16 peak. Evaluation: images/s of the evaluator, single scale and multi-scale + flip, over
images of VOC's usual sizes. Presets: ``full`` (the default on a GPU) is EMANet(512),
ResNet-101, OS8 (voc_emanet512 without pretrained weights), training on 513 crops in
batches of 16; ``small`` (the default on a CPU) the demo network, on 129 crops in batches of
8. Variants: ``fp32`` (NCHW), ``fp32_cl``, ``bf16_cl`` (bfloat16 autocast, channels_last)
and, for training only, ``bf16_cl_compile`` (the same under torch.compile).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from omegaconf import DictConfig

from emanet.benchmarks.flops import FULL_SIZE_MODEL, bf16_peak_tflops, config_train_step_flops
from emanet.benchmarks.records import model_name
from emanet.cli import compose_config
from emanet.data.transforms import height_width
from emanet.engine.amp import AmpSettings
from emanet.engine.evaluate import evaluation_settings
from emanet.engine.evaluator import eval_inference, evaluate
from emanet.engine.optim import build_optimizer
from emanet.engine.runtime import configure_runtime
from emanet.engine.train import train_step
from emanet.models.segmentor import build_model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# The paper's model at full size, or the demo network, which a CPU runs in seconds.
PRESETS = {
    "full": FULL_SIZE_MODEL,
    "small": ["experiment=demo", "eval.mode=whole"],
}


def benchmark_config(
    preset: str | None, device: torch.device, sizes: dict[str, list[str]], overrides: Sequence[str]
) -> DictConfig:
    """The train.py config of ``preset`` (default: full on a GPU, small on a CPU) with the
    preset's ``sizes`` and the user's ``overrides`` on top."""
    preset = preset or ("full" if device.type == "cuda" else "small")
    return compose_config("train", [*PRESETS[preset], *sizes[preset], *overrides])


# ------------------------------------------------------------------------------- train

# runtime.amp + runtime.channels_last, and whether to torch.compile (runtime.compile).
TRAIN_VARIANTS = {
    "fp32": (AmpSettings(), False),
    "fp32_cl": (AmpSettings(channels_last=True), False),
    "bf16_cl": (AmpSettings(torch.bfloat16, channels_last=True), False),
    "bf16_cl_compile": (AmpSettings(torch.bfloat16, channels_last=True), True),
}

DEFAULT_VARIANTS = ["fp32", "bf16_cl", "bf16_cl_compile"]  # fp32_cl on request (CPUs: see docs/benchmarks.md)

# The training benchmark's crops and batch: the paper's on a GPU, a CPU's size otherwise.
TRAIN_SIZES = {
    "full": ["dataset.crop_size=513", "schedule.batch_size=16"],
    "small": ["dataset.crop_size=129", "schedule.batch_size=8"],
}


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


def train_benchmark(
    device: torch.device, variants: list[str], repeats: int, preset: str | None = None, overrides: Sequence[str] = ()
) -> dict:
    """Training-step throughput of each of ``variants`` at the preset's crops and batch: the
    result that ``benchmark.py train`` records."""
    cfg = benchmark_config(preset, device, TRAIN_SIZES, overrides)
    configure_runtime(cfg)  # seed, threads and cuDNN autotuning as the trainer has them
    flops = config_train_step_flops(cfg, cfg.schedule.batch_size)
    rows = measure_train(cfg, device, variants, repeats, flops)
    return {
        "model": model_name(cfg), "crop": cfg.dataset.crop_size, "batch": cfg.schedule.batch_size,
        "gflops_per_step": round(flops / 1e9, 1), "cudnn_benchmark": cfg.runtime.cudnn_benchmark, "rows": rows,
    }


# -------------------------------------------------------------------------------- eval


EVAL_VARIANTS = {name: amp for name, (amp, compile_network) in TRAIN_VARIANTS.items() if not compile_network}
VOC_IMAGE_SIZES = [(375, 500), (500, 375), (333, 500), (500, 334)]  # (height, width), the commonest in VOC
EVAL_PROTOCOLS = ("single scale", "MS+flip")


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


def eval_benchmark(
    device: torch.device, variants: list[str], images: int, preset: str | None = None, overrides: Sequence[str] = ()
) -> dict:
    """Single-scale and MS+flip evaluation speed of each of ``variants`` over ``images``
    VOC-sized images: the result that ``benchmark.py eval`` records."""
    cfg = benchmark_config(preset, device, {"full": [], "small": []}, overrides)
    rows = measure_eval(cfg, device, variants, images)
    return {"model": model_name(cfg), "image_size": "VOC sizes", "images": images, "mode": cfg.eval.mode,
            "cudnn_benchmark": cfg.eval.cudnn_benchmark, "rows": rows}
