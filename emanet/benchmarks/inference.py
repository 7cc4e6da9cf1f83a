"""Single-scale inference on a CPU, several ways side by side: what the Segmenter should run.

For each network (``--presets``: ``small``, the demo network; ``full``, EMANet(512) ResNet-101
OS8; both with random weights, seed 0, which leave the speed as it is), batch (``--batches``)
and variant, on a batch of ``--size`` x ``--size`` smooth random images: the images/s of the
steady state (the median of ``--repeats`` calls after a warm-up call), the speed-up over
eager float32, the peak resident set size of the process that ran it, and the share of
pixels whose class (argmax of the logits) is eager float32's on the same images. Each
variant runs in a fresh process of its own, so that none inherits another's peak memory,
at ``--threads`` threads (default: the cores this process may use). Variants:

- ``eager``: PyTorch, float32, NCHW, under torch.inference_mode(); always measured, as
  the reference of the others;
- ``channels_last``: the model and the images in channels_last, float32;
- ``bf16``: bfloat16 autocast with channels_last, only on a CPU with native bfloat16
  (AVX-512 BF16 or AMX), where it can pay off; elsewhere skipped, with the reason;
- ``compile``: torch.compile (inductor), float32; its first call, which compiles, is timed
  apart;
- ``onnxruntime``: the network exported to ONNX (emanet.engine.onnx_export) and run by
  onnxruntime at the same threads; the export runs once per network, in a process of its
  own, and is timed apart (the runs' peak memory is that of running a saved export).

For each network and batch the result names the fastest variant whose classes agree with
eager float32's on at least 99.99% of the pixels (``fastest_agreeing``): the Segmenter's
default on a CPU is chosen from it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch._inductor.utils import fresh_cache

from emanet.benchmarks.measure import benchmark_config, timed
from emanet.engine.amp import AmpSettings
from emanet.engine.onnx_export import MIN_AGREEMENT, check_input, export_graph
from emanet.engine.onnx_runtime import OnnxNetwork
from emanet.engine.runtime import usable_cores
from emanet.models.segmentor import SegmentationModel, build_model, eval_output_stride_of

CPU = torch.device("cpu")
# The PyTorch variants: precision and memory format (as eval.amp and eval.channels_last), and
# whether to torch.compile.
PYTORCH_VARIANTS = {
    "eager": (AmpSettings(), False),
    "channels_last": (AmpSettings(channels_last=True), False),
    "bf16": (AmpSettings(torch.bfloat16, channels_last=True), False),
    "compile": (AmpSettings(), True),
}
INFER_VARIANTS = [*PYTORCH_VARIANTS, "onnxruntime"]
REFERENCE = "eager"
NO_BF16 = "no AVX-512 BF16/AMX on this CPU"
# Neither preset's sizes matter here: the benchmark feeds its own images.
PRESET_SIZES = {"full": [], "small": []}


def infer_benchmark(
    presets: Sequence[str], batches: Sequence[int], variants: Sequence[str], size: int = 512, repeats: int = 3,
    threads: int | None = None,
) -> dict:
    """Every variant of every network at every batch: the result that ``benchmark.py infer``
    records, with the fastest variant that agrees with eager float32 for each network and batch."""
    threads = threads or usable_cores()
    torch.set_num_threads(threads)  # the record's machine description says how many
    variants = list(dict.fromkeys([REFERENCE, *variants]))
    rows = []
    for preset in presets:
        rows += measure_network(preset, batches, variants, size, repeats, threads)
    return {
        "size": size, "threads": threads, "repeats": repeats, "weights": "random (seed 0)",
        "min_agreement": MIN_AGREEMENT, "rows": rows, "fastest_agreeing": fastest_agreeing(rows),
    }


def measure_network(
    preset: str, batches: Sequence[int], variants: list[str], size: int, repeats: int, threads: int
) -> list[dict]:
    """A row per batch and variant of the preset's network; the reference variant first."""
    cfg = benchmark_config(preset, CPU, PRESET_SIZES, [])
    name = network_name(cfg)
    rows = []
    with tempfile.TemporaryDirectory(prefix="emanet-infer-") as folder:
        onnx_file = Path(folder) / "model.onnx"
        export = attempt(export_model, preset, onnx_file, threads) if "onnxruntime" in variants else {}
        for batch in batches:
            reference = {}
            for variant in variants:
                measured = measure_or_skip(preset, variant, batch, size, repeats, threads, onnx_file, export)
                reference = measured if variant == REFERENCE else reference
                rows.append(variant_row(name, batch, variant, measured, reference))
                print_row(rows[-1])
    return rows


def network_name(cfg: DictConfig) -> str:
    """"voc_emanet512 R101 OS8": the output stride the network runs at, as evaluation's."""
    return f"{cfg.name} R{cfg.model.backbone.depth} OS{eval_output_stride_of(cfg)}"


def measure_or_skip(
    preset: str, variant: str, batch: int, size: int, repeats: int, threads: int, onnx_file: Path, export: dict
) -> dict:
    """The measurement of one variant, or ``{"skipped": why}``: bfloat16 without native
    support, onnxruntime without an export."""
    if variant == "bf16" and not native_bf16():
        return {"skipped": NO_BF16}
    if variant == "onnxruntime" and "skipped" in export:
        return export
    measured = attempt(measure_variant, preset, variant, batch, size, repeats, threads, onnx_file)
    if variant == "onnxruntime":
        return {**measured, "setup_seconds": export["seconds"], "export_peak_rss_gib": export["peak_rss_gib"]}
    return measured


def native_bf16() -> bool:
    """Whether oneDNN has bfloat16 instructions here (AVX-512 BF16 or AMX): emulated,
    bfloat16 runs several times slower than float32 (docs/benchmarks.md)."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def attempt(function: Callable[..., dict], *args) -> dict:
    """``function(*args)`` in a fresh process; where it fails or its process dies (out of
    memory), ``{"skipped": why}``, so that one variant does not cost the others' measurements."""
    try:
        return in_fresh_process(function, *args)
    except Exception as error:  # recorded in the row, and printed
        return {"skipped": " ".join(f"failed with {type(error).__name__}: {error}".split())}  # one line, for the table


def in_fresh_process(function: Callable[..., dict], *args) -> dict:
    """``function(*args)`` in a new Python process of its own: its peak RSS is that of this
    measurement alone (spawned, not forked: a fork would start from this process's memory)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def peak_rss_gib() -> float:
    """The peak resident set size of this process so far (Linux counts ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def inference_model(preset: str) -> SegmentationModel:
    """The preset's network with random weights (seed 0: the same in every process), in eval
    mode, at the evaluation's output stride."""
    cfg = benchmark_config(preset, CPU, PRESET_SIZES, [])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False, auxiliary=False).eval()
    model.backbone.set_output_stride(eval_output_stride_of(cfg))
    return model


def export_model(preset: str, onnx_file: Path, threads: int) -> dict:
    """Export the preset's network to ``onnx_file`` (in a process of its own): the seconds it
    took and the process's peak RSS."""
    torch.set_num_threads(threads)
    model = inference_model(preset)
    started = time.perf_counter()
    onnx_file.write_bytes(export_graph(model).SerializeToString())
    return {"seconds": round(time.perf_counter() - started, 1), "peak_rss_gib": peak_rss_gib()}


def pytorch_network(preset: str, variant: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images to float32 logits with the PyTorch variant, under torch.inference_mode()."""
    amp, compile_network = PYTORCH_VARIANTS[variant]
    model: nn.Module = inference_model(preset)
    if amp.channels_last:
        model = model.to(memory_format=torch.channels_last)
    network = torch.compile(model) if compile_network else model

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), amp.autocast(CPU):
            return network(amp.memory_format(images)).float()

    return run


def measure_variant(
    preset: str, variant: str, batch: int, size: int, repeats: int, threads: int, onnx_file: Path
) -> dict:
    """One variant at one batch (in a process of its own): the median seconds of ``repeats``
    calls after the first (the warm-up; for ``compile`` the compilation, whose seconds are
    kept), the classes of the first call's logits and the process's peak RSS. ``compile``
    compiles into an empty inductor cache, as a first run does: a cache that earlier runs
    left would make its compile time that of loading their results."""
    torch.set_num_threads(threads)
    with fresh_cache() if variant == "compile" else contextlib.nullcontext():
        network = OnnxNetwork(onnx_file) if variant == "onnxruntime" else pytorch_network(preset, variant)
        images = check_input(batch, size, size, seed=0)
        started = time.perf_counter()
        classes = network(images).argmax(1).to(torch.int16).numpy()
        first_call = time.perf_counter() - started
        seconds = timed(lambda: network(images), CPU, repeats, warmup=0)
    return {
        "images_per_second": batch / seconds, "classes": classes, "peak_rss_gib": peak_rss_gib(),
        "setup_seconds": round(first_call, 1) if variant == "compile" else None,
    }


def variant_row(name: str, batch: int, variant: str, measured: dict, reference: dict) -> dict:
    """The record's row of a variant: its speed against the ``reference`` measurement (eager
    float32, of the same network and batch) and the share of pixels whose class agrees."""
    row = {"model": name, "batch": batch, "variant": variant, "skipped": measured.get("skipped"),
           "images_per_second": None, "speedup_vs_eager": None, "peak_rss_gib": None, "pixel_agreement": None,
           "agrees": None, "setup_seconds": measured.get("setup_seconds"),
           "export_peak_rss_gib": measured.get("export_peak_rss_gib")}
    if row["skipped"]:
        return row
    speed = measured["images_per_second"]
    row |= {"images_per_second": round(speed, 3), "peak_rss_gib": measured["peak_rss_gib"]}
    if "classes" in reference:  # not where eager float32 failed
        agreement = float((measured["classes"] == reference["classes"]).mean())
        row |= {"speedup_vs_eager": round(speed / reference["images_per_second"], 2),
                "pixel_agreement": round(agreement, 6), "agrees": agreement >= MIN_AGREEMENT}
    return row


def print_row(row: dict) -> None:
    where = f"{row['model']}, batch {row['batch']}, {row['variant']:>13}"
    if row["skipped"]:
        print(f"{where}: skipped ({row['skipped']})", flush=True)
        return
    speedup = "-" if row["speedup_vs_eager"] is None else f"{row['speedup_vs_eager']:.2f}"
    agreement = "-" if row["pixel_agreement"] is None else f"{row['pixel_agreement']:.4%}"
    print(f"{where}: {row['images_per_second']:8.3f} images/s, {speedup}x eager, peak RSS "
          f"{row['peak_rss_gib']:.2f} GiB, classes as eager's on {agreement} of pixels", flush=True)


def fastest_agreeing(rows: list[dict]) -> list[dict]:
    """For each network and batch, the fastest variant whose classes agree with eager
    float32's on at least :data:`MIN_AGREEMENT` of the pixels, and its speed-up."""
    fastest = {}
    for row in rows:
        key = (row["model"], row["batch"])
        if row["agrees"] and (key not in fastest or row["images_per_second"] > fastest[key]["images_per_second"]):
            fastest[key] = row
    return [{"model": row["model"], "batch": row["batch"], "variant": row["variant"],
             "speedup_vs_eager": row["speedup_vs_eager"]} for row in fastest.values()]
