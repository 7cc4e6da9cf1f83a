"""The release's parameter groups and poly learning rate, against hand computation."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from emanet.cli import compose_config
from emanet.engine.optim import (
    build_optimizer,
    build_poly_scheduler,
    configured_hyperparameters,
    parameter_groups,
    poly_factor,
    restore_configured_hyperparameters,
)
from emanet.engine.train import loss_divisor, segmentation_loss
from emanet.errors import ConfigError


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)  # with bias


def test_parameter_groups_follow_the_release():
    model = Tiny()
    groups = parameter_groups(model)
    assert [id(p) for p in groups["conv_weights"]] == [id(model.conv.weight), id(model.head.weight)]
    assert [id(p) for p in groups["norm_weights"]] == [id(model.bn.weight)]
    assert [id(p) for p in groups["biases"]] == [id(model.bn.bias), id(model.head.bias)]


def test_stray_parameters_are_refused():
    model = Tiny()
    model.scale = nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="scale"):
        parameter_groups(model)


def test_optimizer_lrs_and_weight_decay_per_group():
    cfg = OmegaConf.create({"lr": 0.009, "momentum": 0.9, "weight_decay": 1e-4, "bias_lr_mult": 2.0})
    optimizer = build_optimizer(Tiny(), cfg)
    settings = {g["name"]: (g["lr"], g["weight_decay"], g["momentum"]) for g in optimizer.param_groups}
    assert settings == {
        "conv_weights": (0.009, 1e-4, 0.9),
        "norm_weights": (0.009, 0.0, 0.9),
        "biases": (0.018, 0.0, 0.9),
    }


@pytest.mark.parametrize(
    "iteration,update_every,expected",
    [
        (0, 1, 1.0),
        (15000, 1, 0.5**0.9),
        (29999, 1, (1 / 30000) ** 0.9),
        (30000, 1, 0.0),
        (15007, 10, (1 - 15000 / 30000) ** 0.9),
        (9, 10, 1.0),
    ],
)
def test_poly_factor(iteration, update_every, expected):
    assert poly_factor(iteration, 30000, 0.9, update_every) == pytest.approx(expected, rel=1e-12)


def test_scheduler_sets_every_group_lr():
    cfg = OmegaConf.create({"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "bias_lr_mult": 2.0})
    optimizer = build_optimizer(Tiny(), cfg)
    scheduler = build_poly_scheduler(optimizer, total_iterations=100, power=0.9)
    for _ in range(40):
        optimizer.step()
        scheduler.step()
    factor = (1 - 41 / 100) ** 0.9  # iteration 40 is the release's step 41
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["conv_weights"] == pytest.approx(0.01 * factor, rel=1e-12)
    assert lrs["biases"] == pytest.approx(0.02 * factor, rel=1e-12)


def trained_optimizer_state(lr: float, steps: int, total: int):
    torch.manual_seed(0)
    model = Tiny()
    cfg = OmegaConf.create({"lr": lr, "momentum": 0.9, "weight_decay": 1e-4, "bias_lr_mult": 2.0})
    optimizer = build_optimizer(model, cfg)
    scheduler = build_poly_scheduler(optimizer, total_iterations=total, power=0.9)
    for _ in range(steps):
        for parameter in model.parameters():
            parameter.grad = torch.ones_like(parameter)
        optimizer.step()
        scheduler.step()
    return model, optimizer.state_dict(), scheduler.state_dict()


def resumed(model, optimizer_state, scheduler_state, cfg, total):
    optimizer = build_optimizer(model, cfg)
    scheduler = build_poly_scheduler(optimizer, total_iterations=total, power=0.9)
    configured = configured_hyperparameters(optimizer)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    restore_configured_hyperparameters(optimizer, scheduler, configured)
    return optimizer, scheduler


def test_a_resumed_optimizer_takes_the_configured_lr_momentum_and_decay_but_keeps_its_buffers():
    model, optimizer_state, scheduler_state = trained_optimizer_state(lr=0.01, steps=40, total=100)
    cfg = OmegaConf.create({"lr": 0.05, "momentum": 0.8, "weight_decay": 2e-4, "bias_lr_mult": 3.0})
    optimizer, scheduler = resumed(model, optimizer_state, scheduler_state, cfg, total=200)
    factor = (1 - 41 / 200) ** 0.9  # the new schedule's step 41
    settings = {g["name"]: (g["lr"], g["momentum"], g["weight_decay"]) for g in optimizer.param_groups}
    assert settings == {
        "conv_weights": (pytest.approx(0.05 * factor, rel=1e-12), 0.8, 2e-4),
        "norm_weights": (pytest.approx(0.05 * factor, rel=1e-12), 0.8, 0.0),
        "biases": (pytest.approx(0.15 * factor, rel=1e-12), 0.8, 0.0),
    }
    # The momentum buffers are the checkpoint's, and the next step follows the new schedule.
    buffers = [state["momentum_buffer"] for state in optimizer_state["state"].values()]
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], b) for p, b in zip(
        (p for g in optimizer.param_groups for p in g["params"]), buffers, strict=True))
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * (1 - 42 / 200) ** 0.9, rel=1e-12)


def test_a_resumed_optimizer_with_the_same_config_is_exactly_the_checkpoints():
    model, optimizer_state, scheduler_state = trained_optimizer_state(lr=0.01, steps=37, total=100)
    cfg = OmegaConf.create({"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "bias_lr_mult": 2.0})
    optimizer, _ = resumed(model, optimizer_state, scheduler_state, cfg, total=100)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in optimizer_state["param_groups"]]
    assert [g["initial_lr"] for g in optimizer.param_groups] == [0.01, 0.01, 0.02]


def release_lrs(base_lr, total, power, update_every):
    """The lr of each step as the release's loop sets it: steps counted from 1, the lr
    recomputed only on steps that are multiples of ``update_every``."""
    lr, lrs = base_lr, []
    for step in range(1, total + 1):
        if step % update_every == 0:
            lr = base_lr * (1 - step / total) ** power
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize("update_every", [1, 10])
def test_scheduler_gives_the_release_lr_at_every_iteration(update_every):
    cfg = OmegaConf.create({"lr": 0.009, "momentum": 0.9, "weight_decay": 1e-4, "bias_lr_mult": 2.0})
    optimizer = build_optimizer(Tiny(), cfg)
    scheduler = build_poly_scheduler(optimizer, total_iterations=100, power=0.9, update_every=update_every)
    ours = []
    for _ in range(100):
        ours.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = release_lrs(0.009, 100, 0.9, update_every)
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert ours[-1] == 0.0
    if update_every == 10:
        assert ours[:9] == [0.009] * 9 and ours[9] < 0.009


def test_loss_divisor_and_loss():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2 classes, 1, 2)
    labels = torch.tensor([[[0, 255]]])
    pixel_loss = torch.log(1 + torch.exp(torch.tensor(-2.0)))  # CE of the one valid pixel
    valid = loss_divisor([labels], 255, "valid")
    all_pixels = loss_divisor([labels], 255, "all_pixels")
    assert (float(valid), float(all_pixels)) == (1.0, 2.0)
    assert segmentation_loss(logits, labels, 255, valid) == pytest.approx(float(pixel_loss))
    assert segmentation_loss(logits, labels, 255, all_pixels) == pytest.approx(float(pixel_loss) / 2)
    # Counted over every micro-batch of the step; a batch without labels gives a zero loss.
    assert float(loss_divisor([labels, torch.zeros(1, 1, 3, dtype=torch.long)], 255, "valid")) == 4.0
    unlabelled = torch.full((1, 1, 2), 255)
    assert float(segmentation_loss(logits, unlabelled, 255, loss_divisor([unlabelled], 255, "valid"))) == 0.0
    with pytest.raises(ConfigError, match=r"^loss.normalization=mean: expected one of valid, all_pixels$"):
        compose_config("train", ["loss.normalization=mean"])
