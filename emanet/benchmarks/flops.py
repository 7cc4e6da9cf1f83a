"""FLOPs of training steps and forward passes (torch.utils.flop_counter, 2 FLOPs per
multiply-accumulate, counted on the meta device where no data is needed), and what the GPU
targets ask of the hardware in TFLOP/s."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from emanet.benchmarks.records import model_name
from emanet.cli import compose_config
from emanet.data.transforms import height_width
from emanet.models.segmentor import build_model

# Dense bfloat16 tensor-core peaks from NVIDIA's datasheets; the first name contained in
# torch.cuda.get_device_name() counts, so the specific variants come first.
GPU_BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0,
}

TRAIN_TARGET_IMAGES_PER_SECOND = 150  # the paper's 30k x 16-image VOC schedule in under an hour
EVAL_TARGET_IMAGES_PER_SECOND = 1449 / 180  # VOC val, multi-scale + flip, in under 3 minutes

# The paper's model at full size, EMANet(512) R101 OS8 without pretrained weights: the one
# the GPU targets are set for.
FULL_SIZE_MODEL = ["experiment=voc_emanet512", "model.backbone.pretrained=null"]


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


def forward_flops(model: nn.Module, images: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
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


def target_row(workload: str, flops_per_image: float, images_per_second: float) -> dict:
    needed = flops_per_image * images_per_second / 1e12
    return {
        "workload": workload, "tflop_per_image": round(flops_per_image / 1e12, 3),
        "target_images_per_second": round(images_per_second, 2), "tflops_needed": round(needed, 1),
        "fraction_of_bf16_peak": {gpu: round(needed / peak, 3) for gpu, peak in GPU_BF16_PEAK_TFLOPS.items()},
    }


def targets_benchmark(overrides: Sequence[str] = ()) -> dict:
    """What the GPU targets ask of the hardware: FLOPs per image of EMANet(512) R101 (counted
    on the meta device, so on any machine in seconds) times the target rate, as TFLOP/s and
    as a fraction of each known GPU's bf16 peak; ``overrides`` go on top of
    :data:`FULL_SIZE_MODEL`. The result that ``benchmark.py targets`` records."""
    cfg = compose_config("train", [*FULL_SIZE_MODEL, *overrides])
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
    return {"model": model_name(cfg), "rows": rows}
