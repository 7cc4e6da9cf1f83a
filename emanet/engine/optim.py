"""The release's optimizer: three parameter groups, SGD with momentum, poly learning rate."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split parameters as the release does.

    * ``conv_weights``: weights of convolutions (and linear layers), with weight decay;
    * ``norm_weights``: BatchNorm scales, without weight decay;
    * ``biases``: every bias (convolutions and BatchNorm shifts), without weight decay
      and at twice the learning rate.
    """
    groups: dict[str, list[nn.Parameter]] = {"conv_weights": [], "norm_weights": [], "biases": []}
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            groups["conv_weights"].append(module.weight)
        elif isinstance(module, _BatchNorm) and module.weight is not None:
            groups["norm_weights"].append(module.weight)
        if isinstance(module, (nn.Conv2d, nn.Linear, _BatchNorm)) and module.bias is not None:
            groups["biases"].append(module.bias)
    grouped = {id(p) for group in groups.values() for p in group}
    stray = [name for name, p in model.named_parameters() if id(p) not in grouped]
    if stray:
        raise ValueError(f"parameters outside the optimizer's groups: {stray}")
    return groups


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.SGD:
    """SGD over the three groups; each group's ``lr`` is the base lr times its multiplier."""
    groups = parameter_groups(model)
    settings = {
        "conv_weights": (1.0, cfg.weight_decay),
        "norm_weights": (1.0, 0.0),
        "biases": (cfg.bias_lr_mult, 0.0),
    }
    return torch.optim.SGD(
        [
            {"params": params, "name": name, "lr": cfg.lr * settings[name][0], "weight_decay": settings[name][1]}
            for name, params in groups.items()
            if params
        ],
        lr=cfg.lr,
        momentum=cfg.momentum,
    )


def poly_factor(iteration: int, total_iterations: int, power: float, update_every: int = 1) -> float:
    """``(1 - it / total) ** power``, with ``it`` rounded down to a multiple of ``update_every``.

    ``update_every=10`` reproduces the release, which refreshes the lr every 10 iterations.
    """
    iteration = (iteration // update_every) * update_every
    return max(0.0, 1.0 - iteration / total_iterations) ** power


def build_poly_scheduler(
    optimizer: torch.optim.Optimizer, total_iterations: int, power: float, update_every: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    # LambdaLR evaluates the closed form at every step (PolynomialLR's chained product
    # drifts from it in floating point and cannot express the every-N-iterations variant).
    # The release counts steps from 1: iteration ``it`` (from 0) takes the lr of its step
    # it + 1, so the last step runs at lr 0.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: poly_factor(it + 1, total_iterations, power, update_every)
    )


# What the config decides in each parameter group. A checkpoint's optimizer state brings the
# momentum buffers along with these; a resumed run keeps the buffers and takes these anew.
CONFIGURED_KEYS = ("initial_lr", "momentum", "weight_decay")


def configured_hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each group's configured settings, taken before a checkpoint's state overwrites them."""
    return [{key: group[key] for key in CONFIGURED_KEYS} for group in optimizer.param_groups]


def restore_configured_hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, configured: list[dict]
) -> None:
    """Put the config's lr, momentum and weight decay back after loading a checkpoint, and
    set each group's lr for the scheduler's step as LambdaLR computes it (the same values
    when the config is unchanged, so a resumed run stays bit-identical)."""
    for group, settings in zip(optimizer.param_groups, configured, strict=True):
        group.update(settings)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base_lr, lr_lambda in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base_lr * lr_lambda(scheduler.last_epoch)


def group_lrs(optimizer: torch.optim.Optimizer) -> Iterator[tuple[str, float]]:
    for group in optimizer.param_groups:
        yield group["name"], group["lr"]
