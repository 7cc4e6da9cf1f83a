"""The GPU acceptance run: the checks of :mod:`emanet.engine.acceptance` (CUDA against CPU
logits, cudnn.benchmark, bf16 and fp16 training, channels_last, torch.compile,
SyncBatchNorm), then training images/s (fp32, bf16_cl, bf16_cl_compile) and MS+flip
evaluation images/s with peak memory, against the GPU targets. On a CPU the demo network
at toy sizes, the CUDA-only checks skipped with their reasons."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from emanet.benchmarks.flops import (
    EVAL_TARGET_IMAGES_PER_SECOND,
    TRAIN_TARGET_IMAGES_PER_SECOND,
    config_train_step_flops,
)
from emanet.benchmarks.measure import DEFAULT_VARIANTS, benchmark_config, measure_eval, measure_train
from emanet.benchmarks.records import machine_cell, model_name
from emanet.engine import acceptance
from emanet.engine.runtime import configure_runtime

# The measured configuration: EMANet(512) R101 at the training crop and batch on a GPU;
# the demo network at toy sizes on a CPU, so that CI runs the same code in seconds.
ACCEPTANCE_SIZES = {
    "full": ["dataset.crop_size=513", "schedule.batch_size=16"],
    "small": ["dataset.crop_size=33", "schedule.batch_size=2", "eval.scales=[0.5,1.0]"],
}
CPU_UNMEASURED = {"bf16_cl_compile": "not measured on a CPU: inductor spends minutes compiling there"}
EVAL_VARIANTS_MEASURED = ("fp32", "bf16_cl")


def acceptance_benchmark(
    device: torch.device, steps: int, repeats: int, images: int | None = None, preset: str | None = None,
    overrides: Sequence[str] = (),
) -> dict:
    """The checks, then training and MS+flip evaluation speed, printed as they run and as
    tables: the result that ``benchmark.py acceptance`` records (``passed``: every check
    passed or was skipped). ``images``: VOC-sized images to evaluate (16 on a GPU, 2 on a
    CPU unless given)."""
    start = time.perf_counter()
    cfg = benchmark_config(preset, device, ACCEPTANCE_SIZES, overrides)
    configure_runtime(cfg)  # seed, threads and cuDNN autotuning (on, runtime.cudnn_benchmark) as the trainer
    print(f"acceptance on {device}: {model_name(cfg)}, checks on {acceptance.CHECK_BATCH} crops of "
          f"{cfg.dataset.crop_size}, {steps} training steps", flush=True)

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {line}", flush=True)

    checks = acceptance.run_checks(cfg, device, steps, progress)
    unmeasured = CPU_UNMEASURED if device.type == "cpu" else {}
    variants = [variant for variant in DEFAULT_VARIANTS if variant not in unmeasured]
    progress(f"measuring training speed: {cfg.schedule.batch_size} crops of {cfg.dataset.crop_size}")
    flops = config_train_step_flops(cfg, cfg.schedule.batch_size)
    train_rows = measure_train(cfg, device, variants, repeats, flops)
    images = images or (16 if device.type == "cuda" else 2)
    progress(f"measuring MS+flip evaluation speed: {images} VOC-sized images")
    eval_rows = measure_eval(cfg, device, list(EVAL_VARIANTS_MEASURED), images, protocols=("MS+flip",))
    result = {
        "model": model_name(cfg), "passed": acceptance.all_passed(checks),
        "check_crop": cfg.dataset.crop_size, "check_batch": acceptance.CHECK_BATCH, "steps": steps,
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
    return result


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
