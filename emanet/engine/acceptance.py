"""The GPU acceptance checks: what only a GPU can show about the network and the trainer.

Each check compares a way of running the network (on CUDA, in bfloat16 or float16, in
channels_last, compiled, with SyncBatchNorm, with cuDNN autotuning) with the plain float32
way, and returns a :class:`CheckResult`: PASS, FAIL or SKIP, with the largest absolute
difference measured and the tolerance it was held to. Float32 comparisons run with TF32
off (:func:`exact_float32`), so that a difference is the algorithm's, not TF32's 10-bit
mantissa. ``scripts/benchmark.py acceptance`` runs them with the speed measurements.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from emanet.data.transforms import height_width
from emanet.engine.amp import AmpSettings
from emanet.engine.optim import build_optimizer
from emanet.engine.train import train_step
from emanet.errors import TrainingDivergedError
from emanet.models.resnet import BasicBlock, Bottleneck
from emanet.models.segmentor import build_model

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass(frozen=True)
class Tolerance:
    """``absolute + relative x`` the reference's largest magnitude: logits, losses and
    gradients of a random network differ in scale, so a bound in units of the reference."""

    relative: float
    absolute: float = 0.0

    def of(self, reference: torch.Tensor) -> float:
        return self.absolute + self.relative * reference.detach().abs().max().item()

    def __str__(self) -> str:
        rule = f"{self.relative:g} x max|reference|"
        return f"{self.absolute:g} + {rule}" if self.absolute else rule


# Float32 against float32 (TF32 off): only the order of summation differs, ~1e-6 per layer
# relative, which R101's 100 layers and the EM iterations' softmax grow to ~1e-4.
# bfloat16 keeps 8 bits of mantissa (0.4% per rounding), float16 11 bits (0.05%). Measured
# on a CPU (check_model, 2 crops): the losses of 3 steps within 0.2% of float32 (R101 and
# demo); the first step's logits within 9% (bf16) and 4% (fp16) of the largest float32
# logit of the demo network, whose EMA unit's softmax sharpens rounding differences.
TOLERANCES = {
    "cuda_vs_cpu": Tolerance(1e-3),
    "cudnn_benchmark": Tolerance(1e-3),
    "channels_last": Tolerance(1e-3),
    "compile": Tolerance(1e-3),
    "bf16_loss": Tolerance(0.02),
    "bf16_logits": Tolerance(0.25),
    "fp16_loss": Tolerance(0.02),
    "fp16_logits": Tolerance(0.1),
    # With one process SyncBatchNorm takes BatchNorm's own kernels: only nondeterministic
    # cuDNN backward algorithms (atomic adds) may separate the gradients.
    "sync_batch_norm": Tolerance(1e-4),
}

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CHECK_BATCH = 2  # BatchNorm in training mode needs two samples; two keep the CPU reference quick


@dataclass(frozen=True)
class CheckResult:
    """``difference``: the largest absolute difference (None when nothing was compared or
    a value was not finite); ``tolerance``: the largest it may be; ``detail``: what was
    compared and how the tolerance was set, or why the check failed or was skipped."""

    name: str
    status: str
    difference: float | None = None
    tolerance: float | None = None
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def skipped(name: str, reason: str) -> CheckResult:
    return CheckResult(name, SKIP, detail=reason)


def compare(name: str, measured: torch.Tensor, reference: torch.Tensor, tolerance: Tolerance, what: str) -> CheckResult:
    """PASS if ``measured`` is finite and within ``tolerance`` of ``reference`` everywhere."""
    return compare_tensors(name, {what: (measured, reference)}, tolerance)


def compare_tensors(
    name: str, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], tolerance: Tolerance
) -> CheckResult:
    """Each (measured, reference) pair against its own tolerance; the result reports the
    pair closest to (or furthest past) its bound."""
    worst: tuple[float, str, float, float] | None = None  # (difference / bound, what, difference, bound)
    for what, (measured, reference) in pairs.items():
        if measured.shape != reference.shape:
            return CheckResult(name, FAIL, detail=f"{what}: shape {tuple(measured.shape)} != {tuple(reference.shape)}")
        if not torch.isfinite(measured).all():
            return CheckResult(name, FAIL, detail=f"{what}: not finite")
        difference = (measured.detach().float().cpu() - reference.detach().float().cpu()).abs().max().item()
        bound = tolerance.of(reference.float())
        ratio = difference / bound if bound > 0 else (0.0 if difference == 0 else float("inf"))
        if worst is None or ratio > worst[0]:
            worst = (ratio, what, difference, bound)
    ratio, what, difference, bound = worst
    which = what if len(pairs) == 1 else f"worst of {len(pairs)}: {what}"
    detail = f"{which}; tolerance {tolerance}"
    return CheckResult(name, PASS if ratio <= 1 else FAIL, difference, bound, detail)


@contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for matrix products and cuDNN convolutions, for the duration."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@contextmanager
def cudnn_autotuning(enabled: bool) -> Iterator[None]:
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def main_logits(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The logits of a forward pass; a training-mode pass of a model with an auxiliary head
    returns ``(logits, aux_logits)``."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs[0]


def eval_logits(model: nn.Module, images: torch.Tensor, amp: AmpSettings | None = None) -> torch.Tensor:
    """(B, classes, H, W) float32 logits of an evaluation-mode pass."""
    amp = amp or AmpSettings()
    model.eval()
    with torch.no_grad(), amp.autocast(images.device):
        return main_logits(model(amp.memory_format(images))).float()


# ---------------------------------------------------------------------------- the checks


def check_cuda_matches_cpu(model: nn.Module, images: torch.Tensor, tolerance: Tolerance) -> CheckResult:
    """Float32 logits of ``model`` on its device against a copy of it on the CPU."""
    on_device = eval_logits(model, images)
    on_cpu = eval_logits(copy.deepcopy(model).cpu(), images.cpu())
    return compare("cuda_vs_cpu_logits", on_device, on_cpu, tolerance, "float32 logits, CUDA vs CPU")


def check_cudnn_benchmark(model: nn.Module, images: torch.Tensor, tolerance: Tolerance) -> CheckResult:
    """Logits with the algorithms cuDNN's autotuning picks against cuDNN's default ones."""
    with cudnn_autotuning(False):
        default = eval_logits(model, images)
    with cudnn_autotuning(True):
        autotuned = eval_logits(model, images)
    return compare("cudnn_benchmark_logits", autotuned, default, tolerance, "float32 logits, benchmark on vs off")


def check_channels_last(model: nn.Module, images: torch.Tensor, tolerance: Tolerance) -> CheckResult:
    """Float32 logits of a channels_last (NHWC) copy of ``model`` on NHWC images against ``model``."""
    plain = eval_logits(model, images)
    nhwc = eval_logits(copy.deepcopy(model).to(memory_format=torch.channels_last), images,
                       AmpSettings(channels_last=True))
    return compare("channels_last_logits", nhwc, plain, tolerance, "float32 logits, channels_last vs NCHW")


def check_compile(
    model: nn.Module, images: torch.Tensor, tolerance: Tolerance, backend: str = "inductor"
) -> CheckResult:
    """Float32 logits of ``torch.compile(model)`` (the trainer's ``runtime.compile``) against ``model``."""
    plain = eval_logits(model, images)
    torch._dynamo.reset()  # a fixed-size compile, whatever sizes earlier compiles of this code saw
    compiled = eval_logits(torch.compile(copy.deepcopy(model), backend=backend), images)
    return compare("compile_logits", compiled, plain, tolerance, f"float32 logits, torch.compile ({backend}) vs eager")


@dataclass(frozen=True)
class TrainingTrace:
    losses: torch.Tensor  # (steps,) the loss of each training step
    logits: torch.Tensor  # (B, classes, H, W) float32 logits of the first step's forward pass


def train_and_predict(
    model: nn.Module, batch: dict, cfg: DictConfig, device: torch.device, amp: AmpSettings, steps: int
) -> TrainingTrace:
    """``steps`` steps of the trainer's own :func:`train_step` on ``batch`` from a copy of
    ``model`` under ``amp``: the loss of each, and the logits of the first one."""
    model = copy.deepcopy(model).train()
    optimizer = build_optimizer(model, cfg.optim)
    first_logits = []

    def keep_first_logits(module: nn.Module, inputs: tuple, outputs) -> None:
        if not first_logits:
            first_logits.append(main_logits(outputs).detach().float())

    hook = model.register_forward_hook(keep_first_logits)
    try:
        losses = [
            train_step(model, [batch], optimizer, device, cfg.dataset.ignore_index, cfg.loss.normalization, amp,
                       aux_weight=cfg.model.aux.weight)
            for _ in range(steps)
        ]
    finally:
        hook.remove()
    return TrainingTrace(torch.tensor(losses), first_logits[0])


def check_amp_training(
    model: nn.Module, batch: dict, cfg: DictConfig, device: torch.device, precision: str, steps: int,
    reference: TrainingTrace, loss_tolerance: Tolerance, logits_tolerance: Tolerance,
) -> list[CheckResult]:
    """Training steps under autocast to ``precision`` ("bf16" or "fp16", the latter with the
    trainer's gradient scaler) stay finite and close to ``reference``, the same steps in
    float32: the loss of every step, and the logits of the first."""
    dtype = AMP_DTYPES[precision]
    amp = AmpSettings(dtype, scaler=torch.amp.GradScaler(device.type, enabled=dtype is torch.float16))
    loss_name, logits_name = f"{precision}_training_loss", f"{precision}_training_logits"
    try:
        trace = train_and_predict(model, batch, cfg, device, amp, steps)
    except TrainingDivergedError as error:
        return [CheckResult(loss_name, FAIL, detail=str(error)),
                CheckResult(logits_name, FAIL, detail="no logits: the training steps diverged")]
    return [
        compare(loss_name, trace.losses, reference.losses, loss_tolerance, f"loss of {steps} steps vs float32"),
        compare(logits_name, trace.logits, reference.logits, logits_tolerance, "first step's logits vs float32"),
    ]


def batch_norm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)}


def compare_batch_norm_variants(
    reference: nn.Module, candidate: nn.Module, batch: dict, ignore_index: int, tolerance: Tolerance, name: str
) -> list[CheckResult]:
    """One training-mode forward and backward of both models on ``batch``: their logits,
    the running statistics of their normalisation layers after it, and their gradients."""
    outputs, statistics, gradients = {}, {}, {}
    for role, model in (("reference", reference), ("candidate", candidate)):
        model.train().zero_grad(set_to_none=True)
        logits = main_logits(model(batch["image"]))
        F.cross_entropy(logits, batch["label"], ignore_index=ignore_index).backward()
        outputs[role] = logits.detach()
        statistics[role] = {f"{layer}.{buffer}": getattr(module, buffer)
                            for layer, module in batch_norm_layers(model).items()
                            for buffer in ("running_mean", "running_var")}
        gradients[role] = {parameter: value.grad for parameter, value in model.named_parameters()
                           if value.grad is not None}
    if statistics["candidate"].keys() != statistics["reference"].keys():
        return [CheckResult(f"{name}_running_stats", FAIL, detail="the two models' normalisation layers differ")]
    return [
        compare(f"{name}_output", outputs["candidate"], outputs["reference"], tolerance, "training-mode logits"),
        compare_tensors(f"{name}_running_stats", {key: (statistics["candidate"][key], value)
                                                  for key, value in statistics["reference"].items()}, tolerance),
        compare_tensors(f"{name}_gradients", {key: (gradients["candidate"][key], value)
                                              for key, value in gradients["reference"].items()}, tolerance),
    ]


@contextmanager
def one_process_group(device: torch.device) -> Iterator[None]:
    """A process group of this process alone, NCCL on ``device``, for the duration."""
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=device)
    try:
        yield
    finally:
        dist.destroy_process_group()


def check_sync_batch_norm(
    model: nn.Module, batch: dict, device: torch.device, ignore_index: int, tolerance: Tolerance
) -> list[CheckResult]:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` of ``model`` under a one-process NCCL group
    against ``model`` with BatchNorm: logits, running statistics, gradients."""
    names = ["sync_batch_norm_output", "sync_batch_norm_running_stats", "sync_batch_norm_gradients"]
    if not dist.is_nccl_available():
        return [CheckResult(name, FAIL, detail="this PyTorch has no NCCL") for name in names]
    with one_process_group(device):
        # The group itself works: a sum over one process is the tensor itself.
        probe = torch.full((4,), 3.0, device=device)
        dist.all_reduce(probe)
        if not torch.equal(probe.cpu(), torch.full((4,), 3.0)):
            return [CheckResult(name, FAIL, detail=f"NCCL all_reduce over one process gave {probe.tolist()}")
                    for name in names]
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
        return compare_batch_norm_variants(copy.deepcopy(model), synced, batch, ignore_index, tolerance,
                                           "sync_batch_norm")


# --------------------------------------------------------------------------- all of them


def check_model(cfg: DictConfig) -> nn.Module:
    """The configured network, randomly initialised (seed 0), each residual block starting
    as the identity and without dropout, so that the checks compare precision and kernels.

    A randomly initialised deep BatchNorm network is chaotic: in a random R101 (measured
    on a CPU) bfloat16's 0.4% rounding error at layer1 grows to 85% of the features by
    layer4, and the logits differ as much as two random networks. With the last
    BatchNorm weight of every residual branch at zero (torchvision's zero_init_residual)
    the same comparison differs by 5%. Dropout masks drawn for bfloat16 and for float32
    activations need not agree, and would be compared instead of the precision."""
    model_cfg = OmegaConf.merge(cfg.model, {"dropout": 0.0})
    torch.manual_seed(0)
    model = build_model(model_cfg, cfg.dataset.num_classes, load_pretrained=False)
    for block in model.modules():
        if isinstance(block, Bottleneck | BasicBlock):
            nn.init.zeros_(block.bn3.weight if isinstance(block, Bottleneck) else block.bn2.weight)
    return model


def check_batch(cfg: DictConfig, device: torch.device) -> dict:
    """:data:`CHECK_BATCH` random crops of ``dataset.crop_size`` and labels in every class."""
    generator = torch.Generator().manual_seed(0)
    (height, width), classes = height_width(cfg.dataset.crop_size), cfg.dataset.num_classes
    images = torch.randn(CHECK_BATCH, 3, height, width, generator=generator)  # (B, 3, H, W)
    labels = torch.randint(0, classes, (CHECK_BATCH, height, width), generator=generator)  # (B, H, W)
    return {"image": images.to(device), "label": labels.to(device)}


CPU_SKIPS = {
    "cuda_vs_cpu_logits": "needs a CUDA device to compare with the CPU",
    "cudnn_benchmark_logits": "cuDNN autotuning applies to CUDA convolutions only",
    "compile_logits": "inductor spends minutes compiling on a CPU; checked on a GPU",
    "sync_batch_norm_output": "SyncBatchNorm and NCCL need CUDA",
    "sync_batch_norm_running_stats": "SyncBatchNorm and NCCL need CUDA",
    "sync_batch_norm_gradients": "SyncBatchNorm and NCCL need CUDA",
}


def run_checks(
    cfg: DictConfig, device: torch.device, steps: int, progress: Callable[[str], None] = print
) -> list[CheckResult]:
    """Every check on the configured network at ``dataset.crop_size``, float32 with TF32
    off and cuDNN autotuning on (as the trainer runs); on a CPU the checks that need CUDA
    are skipped (:data:`CPU_SKIPS`)."""
    on_gpu = device.type == "cuda"
    model = check_model(cfg).to(device)
    batch = check_batch(cfg, device)
    images, results = batch["image"], []

    def run(description: str, check: Callable[[], CheckResult | list[CheckResult]]) -> None:
        progress(f"checking {description}")
        outcome = check()
        results.extend(outcome if isinstance(outcome, list) else [outcome])

    with exact_float32(), cudnn_autotuning(True):
        if on_gpu:
            run("CUDA logits against CPU logits", lambda: check_cuda_matches_cpu(model, images,
                                                                                  TOLERANCES["cuda_vs_cpu"]))
            run("cudnn.benchmark", lambda: check_cudnn_benchmark(model, images, TOLERANCES["cudnn_benchmark"]))
        else:
            results += [skipped(name, CPU_SKIPS[name]) for name in ("cuda_vs_cpu_logits", "cudnn_benchmark_logits")]
        progress(f"training {steps} float32 steps for the mixed-precision checks")
        reference = train_and_predict(model, batch, cfg, device, AmpSettings(), steps)
        for precision in AMP_DTYPES:
            run(f"{precision} training steps", lambda precision=precision: check_amp_training(
                model, batch, cfg, device, precision, steps, reference,
                TOLERANCES[f"{precision}_loss"], TOLERANCES[f"{precision}_logits"]))
        run("channels_last", lambda: check_channels_last(model, images, TOLERANCES["channels_last"]))
        if on_gpu:
            run("torch.compile (compiling takes a minute or two)",
                lambda: check_compile(model, images, TOLERANCES["compile"]))
            run("SyncBatchNorm under a one-process NCCL group", lambda: check_sync_batch_norm(
                model, batch, device, cfg.dataset.ignore_index, TOLERANCES["sync_batch_norm"]))
        else:
            results.append(skipped("compile_logits", CPU_SKIPS["compile_logits"]))
            results += [skipped(name, CPU_SKIPS[name]) for name in CPU_SKIPS if name.startswith("sync_batch_norm")]
    return results


def all_passed(results: list[CheckResult]) -> bool:
    return all(result.status != FAIL for result in results)


def format_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def checks_table(results: list[CheckResult]) -> str:
    """A plain-text table: check, result, max abs difference, tolerance, detail."""
    header = ("check", "result", "max abs diff", "tolerance", "detail")
    rows = [header] + [(r.name, r.status, format_number(r.difference), format_number(r.tolerance), r.detail)
                       for r in results]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )
