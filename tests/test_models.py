"""Backbone dilation/stride layout, output shapes and the EMANet head."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from emanet.models.resnet import ResNet, stage_strides_and_dilations
from emanet.models.segmentor import build_model


def block_dilations(layer):
    return [block.dilated_convs[0].dilation[0] for block in layer]


def test_release_dilations_resnet101_os8():
    net = ResNet(101, output_stride=8, width=8)
    assert block_dilations(net.layer3) == [1] + [2] * 22
    assert block_dilations(net.layer4) == [2, 8, 16]
    assert net.layer3[0].strided_conv.stride == (1, 1) and net.layer4[0].strided_conv.stride == (1, 1)


def test_release_dilations_resnet101_os16():
    net = ResNet(101, output_stride=16, width=8)
    assert block_dilations(net.layer3) == [1] * 23
    assert net.layer3[0].strided_conv.stride == (2, 2)
    assert block_dilations(net.layer4) == [1, 4, 8]


def test_layout_rejects_bad_multi_grid():
    with pytest.raises(ValueError, match="multi_grid needs one factor per layer4 block"):
        stage_strides_and_dilations(8, (2, 2, 2, 2), (1, 2, 4))


@pytest.mark.parametrize("stem", ["deep", "torchvision"])
@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_shapes(stem, depth, output_stride):
    grid = (1, 2) if depth == 18 else (1, 2, 4)
    net = ResNet(depth, stem=stem, output_stride=output_stride, multi_grid=grid, width=8).eval()
    features = net(torch.randn(1, 3, 65, 97))
    expansion = 1 if depth == 18 else 4
    size = {8: (9, 13), 16: (5, 7)}[output_stride]
    assert features["out"].shape == (1, 8 * 8 * expansion, *size)
    assert features["low_level"].shape == (1, 8 * expansion, 17, 25)
    assert net.out_channels == 8 * 8 * expansion


def test_switching_output_stride_equals_building_at_that_stride():
    torch.manual_seed(0)
    os16 = ResNet(50, output_stride=16, width=8).eval()
    os8 = ResNet(50, output_stride=8, width=8).eval()
    os8.load_state_dict(os16.state_dict())
    x = torch.randn(1, 3, 64, 64)
    os16.set_output_stride(8)
    torch.testing.assert_close(os16(x)["out"], os8(x)["out"])
    os16.set_output_stride(16)
    assert os16(x)["out"].shape[-1] == 4


def test_torchvision_stem_state_dict_matches_torchvision_names():
    import torchvision

    ours = ResNet(50, stem="torchvision").state_dict()
    reference = torchvision.models.resnet50().state_dict()
    assert set(ours) == set(reference) - {"fc.weight", "fc.bias"}
    assert all(ours[k].shape == reference[k].shape for k in ours)


def test_deep_stem_names_match_the_release():
    keys = ResNet(50, stem="deep").state_dict()
    assert {"conv1.0.weight", "conv1.1.weight", "conv1.3.weight", "conv1.4.weight", "conv1.6.weight"} <= set(keys)
    assert keys["conv1.6.weight"].shape == (128, 64, 3, 3) and keys["bn1.weight"].shape == (128,)


def test_emanet_logits_have_input_size():
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "model" / "emanet.yaml")
    cfg.backbone.update(depth=18, width=8, multi_grid=[1, 2])
    cfg.ema.update(channels=16, num_bases=4)
    cfg.mid_channels = 8
    model = build_model(cfg, num_classes=5).eval()
    assert model(torch.randn(2, 3, 50, 70)).shape == (2, 5, 50, 70)
    assert model.head.ema.mu.shape == (1, 16, 4)
