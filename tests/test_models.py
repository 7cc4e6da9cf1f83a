"""Backbone dilation/stride layout, output shapes and the EMANet head."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from emanet.cli import compose_config
from emanet.errors import ConfigError
from emanet.models.resnet import ResNet, stage_strides_and_dilations
from emanet.models.segmentor import build_model

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


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
    # A first factor other than 1 would be ignored: (2, 2, 2) would build (1, 2, 2)'s 1, 4, 4.
    assert stage_strides_and_dilations(16, (3, 4, 6, 3), (1, 2, 2))[3] == (1, [1, 4, 4])
    with pytest.raises(ValueError, match=r"multi_grid must start with 1 .*got \[2, 2, 2\]"):
        stage_strides_and_dilations(16, (3, 4, 6, 3), (2, 2, 2))


@pytest.mark.parametrize("stem", ["deep", "v1c", "torchvision"])
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


def test_v1c_stem_names_match_mmsegmentation():
    keys = ResNet(50, stem="v1c").state_dict()
    stem = {key.rsplit(".", 1)[0] for key in keys if key.startswith("stem.")}
    assert stem == {"stem.0", "stem.1", "stem.3", "stem.4", "stem.6", "stem.7"}
    assert keys["stem.6.weight"].shape == (64, 32, 3, 3) and keys["stem.7.weight"].shape == (64,)
    assert not any(key.startswith(("conv1.", "bn1.")) for key in keys)
    assert keys["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)


def tiny_model_config(model: str):
    overrides = [
        f"model={model}", "model.backbone.depth=18", "model.backbone.width=8", "model.backbone.multi_grid=[1,2]",
    ]
    return compose_config("train", overrides).model


def test_a_model_config_that_cannot_be_built_is_refused_by_the_config_check_naming_the_key():
    # three layer4 blocks at depth 50, but the demo's multi_grid has two factors
    with pytest.raises(ConfigError, match=r"^model.backbone.multi_grid needs one factor per layer4 block \(3\), "
                                          r"got \[1,2\]: set it with the depth"):
        compose_config("train", ["model.backbone.depth=50"])
    with pytest.raises(ConfigError, match=r"^model.backbone.multi_grid=\[2,2\]: expected a list starting with 1$"):
        compose_config("train", ["model.backbone.multi_grid=[2,2]"])
    with pytest.raises(ConfigError, match=r"^model.head=unet: expected one of ema, ema_mmseg, fcn, deeplabv3, "
                                          r"deeplabv3plus, psanet, nonlocal$"):
        compose_config("train", ["model.head=unet"])


@pytest.mark.parametrize("model", ["emanet", "emanet_mmseg", "fcn", "deeplabv3", "deeplabv3plus", "nonlocal"])
def test_every_head_gives_logits_at_input_size(model):
    net = build_model(tiny_model_config(model), num_classes=5).eval()
    assert net(torch.randn(2, 3, 50, 70)).shape == (2, 5, 50, 70)


def test_auxiliary_head_runs_on_layer3_in_training_only():
    cfg = tiny_model_config("deeplabv3")
    assert not any(k.startswith("aux_head.") for k in build_model(cfg, num_classes=5).state_dict())
    cfg.aux.weight = 0.4
    torch.manual_seed(0)
    net = build_model(cfg, num_classes=5).train()
    images = torch.randn(2, 3, 50, 70)
    torch.manual_seed(1)
    logits, aux_logits = net(images)
    assert logits.shape == aux_logits.shape == (2, 5, 50, 70)
    net.eval()  # the reference: FCNHead on layer3 (256 channels, 3x3 conv, BN, ReLU), upsampled
    features = net.backbone(images)
    reference = F.interpolate(
        net.aux_head.classifier(net.aux_head.conv(features["layer3"])), size=(50, 70), mode="bilinear",
        align_corners=True,
    )
    assert (net.aux_head.conv[0].in_channels, net.aux_head.conv[0].out_channels) == (32, 256)  # layer3: 4 x 8
    torch.testing.assert_close(net(images), F.interpolate(net.head(features), size=(50, 70), mode="bilinear",
                                                          align_corners=True))
    net.train()
    for module in net.modules():  # a deterministic training-mode pass: no dropout, BN on running statistics
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.Dropout2d)):
            module.eval()
    torch.testing.assert_close(net(images)[1], reference)
    assert build_model(cfg, num_classes=5, auxiliary=False).aux_head is None
    with pytest.raises(ConfigError, match=r"^model.aux.weight=-1: expected a number >= 0$"):
        compose_config("train", ["model.aux.weight=-1"])


def test_psanet_logits_at_input_size_for_any_feature_size():
    cfg = tiny_model_config("psanet")
    cfg.psa.attention_size = 5
    net = build_model(cfg, num_classes=5).eval()
    assert net.head.collect.attention[1].out_channels == 9 * 9
    assert net(torch.randn(1, 3, 65, 65)).shape == (1, 5, 65, 65)
    assert net(torch.randn(1, 3, 50, 70)).shape == (1, 5, 50, 70)


def test_point_wise_attention_index_matches_a_direct_loop():
    from emanet.models.baseline_heads import point_wise_attention_index

    h, w = 3, 4
    maps = torch.randn((2 * h - 1) * (2 * w - 1), h * w)  # over-complete map of every position p
    index = point_wise_attention_index(h, w)
    gathered = torch.gather(maps, 0, index)
    for p in range(h * w):
        ph, pw = divmod(p, w)
        window = maps[:, p].reshape(2 * h - 1, 2 * w - 1)[h - 1 - ph : 2 * h - 1 - ph, w - 1 - pw : 2 * w - 1 - pw]
        assert torch.equal(gathered[:, p].reshape(h, w), window)


def test_non_local_block_matches_direct_attention():
    from emanet.models.baseline_heads import NonLocalBlock

    torch.manual_seed(0)
    block = NonLocalBlock(8).eval()
    torch.nn.init.normal_(block.out[1].weight)  # leave the identity initialisation
    x = torch.randn(1, 8, 3, 5)
    flat = x.flatten(2)[0]  # (C, N)

    def conv(layer, y):
        return layer.weight[:, :, 0, 0] @ y + layer.bias[:, None]

    attention = torch.softmax(conv(block.theta, flat).T @ conv(block.phi, flat), dim=1)  # (N, N)
    y = block.out[0].weight[:, :, 0, 0] @ (attention @ conv(block.g, flat).T).T
    bn = block.out[1]
    y = (y - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps) * bn.weight[:, None]
    expected = flat + y + bn.bias[:, None]
    torch.testing.assert_close(block(x)[0].flatten(1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
@pytest.mark.parametrize("stem", ["deep", "v1c", "torchvision"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_every_depth_stem_and_stride_at_full_width(depth, stem, output_stride):
    # Shapes only, on the meta device: the full-size networks cost no compute here.
    grid = (1, 2) if depth == 18 else (1, 2, 4)
    with torch.device("meta"):
        net = ResNet(depth, stem=stem, output_stride=output_stride, multi_grid=grid)
        features = net(torch.empty(1, 3, 513, 513))
    channels = 512 if depth < 50 else 2048
    side = {8: 65, 16: 33}[output_stride]
    assert features["out"].shape == (1, channels, side, side)
    assert features["low_level"].shape == (1, channels // 8, 129, 129)
    assert block_dilations(net.layer4) == {8: [2, 8, 16], 16: [1, 4, 8]}[output_stride][: len(grid)]
    layer3 = block_dilations(net.layer3)
    assert layer3 == ([1] + [2] * (len(layer3) - 1) if output_stride == 8 else [1] * len(layer3))


def psa_reference(branch, x):
    """PSANet's point-wise attention written from its definition, one target position at a time.

    Target p = (ph, pw) weighs source q = (qh, qw) by entry q - p of p's own (2s-1)^2 map
    (collect) or by entry p - q of q's map (distribute); the weights are a softmax over
    the sources, and the output at p is the weighted sum of the source features.
    """

    s = branch.size
    features = F.interpolate(branch.reduce(x), size=(s, s), mode="bilinear", align_corners=True)
    maps = branch.attention(features)  # (B, (2s-1)^2, s, s)
    b, c = features.shape[:2]
    weights = torch.empty(b, s * s, s * s)  # [source q, target p]
    out = torch.empty(b, c, s, s)
    for ph in range(s):
        for pw in range(s):
            logits = torch.empty(b, s * s)
            for qh in range(s):
                for qw in range(s):
                    if branch.mode == "collect":
                        entry, (h, w) = (qh - ph + s - 1) * (2 * s - 1) + (qw - pw + s - 1), (ph, pw)
                    else:
                        entry, (h, w) = (ph - qh + s - 1) * (2 * s - 1) + (pw - qw + s - 1), (qh, qw)
                    logits[:, qh * s + qw] = maps[:, entry, h, w]
            weights[:, :, ph * s + pw] = torch.softmax(logits, dim=1)
            out[:, :, ph, pw] = torch.einsum("bq,bcq->bc", weights[:, :, ph * s + pw], features.flatten(2))
    return features, weights, out


@pytest.mark.parametrize("mode", ["collect", "distribute"])
def test_psa_attention_is_a_softmax_over_source_positions(mode):
    from emanet.models.baseline_heads import PointWiseSpatialAttention

    torch.manual_seed(0)
    branch = PointWiseSpatialAttention(6, 4, size=3, mode=mode).eval()
    for module in branch.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 5, 4)  # not the 3x3 grid: the branch resizes
    with torch.no_grad():
        features, ref_weights, ref_out = psa_reference(branch, x)
        weights = branch.attention_weights(features)
        out = branch(x)
    assert weights.shape == (2, 9, 9)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 9))  # each target's weights sum to 1
    assert (weights > 0).all()
    torch.testing.assert_close(weights, ref_weights)
    torch.testing.assert_close(out, ref_out)


def test_psa_collect_and_distribute_weigh_differently():
    from emanet.models.baseline_heads import PointWiseSpatialAttention

    torch.manual_seed(0)
    collect = PointWiseSpatialAttention(6, 4, size=3, mode="collect").eval()
    distribute = PointWiseSpatialAttention(6, 4, size=3, mode="distribute").eval()
    distribute.load_state_dict(collect.state_dict())
    features = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        assert not torch.allclose(collect.attention_weights(features), distribute.attention_weights(features))
