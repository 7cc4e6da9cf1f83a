"""The release's parameter groups and poly learning rate, against hand computation."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from emanet.engine.optim import build_optimizer, build_poly_scheduler, parameter_groups, poly_factor
from emanet.engine.train import segmentation_loss


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
    factor = (1 - 40 / 100) ** 0.9
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["conv_weights"] == pytest.approx(0.01 * factor, rel=1e-12)
    assert lrs["biases"] == pytest.approx(0.02 * factor, rel=1e-12)


def test_loss_normalisations():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2 classes, 1, 2)
    labels = torch.tensor([[[0, 255]]])
    pixel_loss = torch.log(1 + torch.exp(torch.tensor(-2.0)))  # CE of the one valid pixel
    assert segmentation_loss(logits, labels, 255, "valid") == pytest.approx(float(pixel_loss))
    assert segmentation_loss(logits, labels, 255, "all_pixels") == pytest.approx(float(pixel_loss) / 2)


def test_every_parameter_of_emanet_r101_is_in_the_release_group():
    from hydra import compose, initialize_config_dir
    from tests_paths import CONFIGS

    from emanet.models.segmentor import build_model

    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose("train", ["experiment=voc_emanet512"])
    with torch.device("meta"):
        model = build_model(cfg.model, 21, load_pretrained=False)
    groups = {name: {id(p) for p in params} for name, params in parameter_groups(model).items()}
    expected = {"conv_weights": set(), "norm_weights": set(), "biases": set()}
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "bias":
                expected["biases"].add(id(parameter))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                expected["norm_weights"].add(id(parameter))
            else:
                assert isinstance(module, nn.Conv2d) and parameter.ndim == 4
                expected["conv_weights"].add(id(parameter))
    assert groups == expected
    # deep stem 3 + 33 bottlenecks x 3 + 4 downsamples = 106 in ResNet-101; reduce, EMA out, fuse: 3
    assert len(groups["norm_weights"]) == 109
    assert sum(len(ids) for ids in groups.values()) == len(list(model.parameters()))
