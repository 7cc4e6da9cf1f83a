"""mmsegmentation's EMANet: the v1c stem, their head, and importing their checkpoints.

The reference below is a functional forward pass written from the description of
mmsegmentation's network (configs/emanet and mmseg/models/decode_heads/ema_head.py of
open-mmlab/mmsegmentation), reading their own key names: a converted checkpoint must give
its logits and move the bases as it does.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import bilinear_reference
from omegaconf import OmegaConf
from random_weights import RandomWeights

from emanet.cli import compose_config
from emanet.engine.checkpoint import digest_file, load_checkpoint, load_model_weights
from emanet.engine.train import loss_divisor, training_loss
from emanet.errors import CheckpointError, ConfigError
from emanet.importers.mmseg import import_checkpoint
from emanet.models.mmseg import RecordedRecipe, read_mmseg_checkpoint, recorded_recipe, saved_iteration
from emanet.models.resnet import ResNet
from emanet.models.segmentor import build_model

REPO = Path(__file__).resolve().parents[1]

WIDTH, C_EMA, K, CHANNELS, AUX, CLASSES = 8, 16, 4, 8, 8, 19
BLOCKS = (3, 4, 6, 3)  # ResNet-50
EXPERIMENT = "cityscapes_mmseg_r50"
OVERRIDES = [
    f"model.backbone.width={WIDTH}", f"model.ema.channels={C_EMA}", f"model.ema.num_bases={K}",
    f"model.mid_channels={CHANNELS}", f"model.aux.channels={AUX}",
]


def mmseg_state_dict(seed=0):
    """Random weights in the key layout of mmsegmentation's EMANet checkpoints."""
    weights = RandomWeights(seed, batches_tracked=80000)
    g, state, conv, bn = weights.generator, weights.state, weights.conv, weights.bn

    half = WIDTH // 2
    conv("backbone.stem.0", half, 3, 3)
    bn("backbone.stem.1", half)
    conv("backbone.stem.3", half, half, 3)
    bn("backbone.stem.4", half)
    conv("backbone.stem.6", WIDTH, half, 3)
    bn("backbone.stem.7", WIDTH)
    in_c = weights.bottleneck_stages(lambda stage: f"backbone.layer{stage + 1}", WIDTH, WIDTH, BLOCKS)
    conv("decode_head.ema_in_conv.conv", C_EMA, in_c, 3)
    bn("decode_head.ema_in_conv.bn", C_EMA)
    conv("decode_head.ema_mid_conv.conv", C_EMA, C_EMA, 1, bias=True)
    bases = torch.randn(1, C_EMA, K, generator=g)
    state["decode_head.ema_module.bases"] = bases / bases.norm(dim=1, keepdim=True)
    conv("decode_head.ema_out_conv.conv", C_EMA, C_EMA, 1)
    bn("decode_head.ema_out_conv.bn", C_EMA)
    conv("decode_head.bottleneck.conv", CHANNELS, C_EMA, 3)
    bn("decode_head.bottleneck.bn", CHANNELS)
    conv("decode_head.conv_cat.conv", CHANNELS, in_c + CHANNELS, 3)
    bn("decode_head.conv_cat.bn", CHANNELS)
    conv("decode_head.conv_seg", CLASSES, CHANNELS, 1, bias=True)
    conv("auxiliary_head.convs.0.conv", AUX, in_c // 2, 3)
    bn("auxiliary_head.convs.0.bn", AUX)
    conv("auxiliary_head.conv_seg", CLASSES, AUX, 1, bias=True)
    return state


def mmseg_forward(s, x, stages=3, training=False, align_corners=True):
    """mmsegmentation's EMANet on ``x``: (logits, auxiliary logits, the bases after the step).
    ``align_corners``: their heads' setting (True in the 769x769 configs of EXPERIMENT).

    ``training``: BatchNorm on batch statistics and the bases' moving average; dropout is
    left out (it does not reach the bases).
    """

    def bn(y, p):
        if training:
            return F.batch_norm(y, None, None, s[f"{p}.weight"], s[f"{p}.bias"], True, 0.0, 1e-5)
        return F.batch_norm(y, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                            False, 0.0, 1e-5)

    def conv(y, p, stride=1, padding=0, dilation=1):
        return F.conv2d(y, s[f"{p}.weight"], s.get(f"{p}.bias"), stride, padding, dilation)

    def conv_module(y, p, padding):  # mmcv's ConvModule: conv (no bias) -> BN -> ReLU
        return F.relu(bn(conv(y, f"{p}.conv", padding=padding), f"{p}.bn"))

    size = x.shape[-2:]
    y = F.relu(bn(conv(x, "backbone.stem.0", 2, 1), "backbone.stem.1"))
    y = F.relu(bn(conv(y, "backbone.stem.3", 1, 1), "backbone.stem.4"))
    y = F.relu(bn(conv(y, "backbone.stem.6", 1, 1), "backbone.stem.7"))
    y = F.max_pool2d(y, 3, 2, 1)
    # D8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation: a dilated stage's
    # first block at half its dilation.
    features = []
    for layer, (stride, dilation) in enumerate(zip((1, 2, 1, 1), (1, 1, 2, 4), strict=True)):
        for block in range(BLOCKS[layer]):
            p = f"backbone.layer{layer + 1}.{block}"
            block_dilation = dilation // 2 if block == 0 and dilation > 1 else dilation
            block_stride = stride if block == 0 else 1
            out = F.relu(bn(conv(y, f"{p}.conv1"), f"{p}.bn1"))
            out = F.relu(bn(conv(out, f"{p}.conv2", block_stride, block_dilation, block_dilation), f"{p}.bn2"))
            out = bn(conv(out, f"{p}.conv3"), f"{p}.bn3")
            identity = bn(conv(y, f"{p}.downsample.0", block_stride), f"{p}.downsample.1") if block == 0 else y
            y = F.relu(out + identity)
        features.append(y)
    x4 = features[3]
    feats = conv_module(x4, "decode_head.ema_in_conv", 1)
    identity = feats
    feats = conv(feats, "decode_head.ema_mid_conv.conv")
    b, c, h, w = feats.shape
    feats = feats.view(b, c, h * w)
    bases = s["decode_head.ema_module.bases"].repeat(b, 1, 1)
    for _ in range(stages):
        attention = torch.softmax(torch.einsum("bcn,bck->bnk", feats, bases), dim=2)
        attention_normed = attention / attention.sum(dim=1, keepdim=True).clamp_min(1e-12)
        bases = torch.einsum("bcn,bnk->bck", feats, attention_normed)
        bases = bases / bases.norm(dim=1, keepdim=True).clamp_min(1e-12)
    recon = torch.einsum("bck,bnk->bcn", bases, attention).view(b, c, h, w)
    new_bases = s["decode_head.ema_module.bases"]
    if training:
        mean = bases.mean(dim=0, keepdim=True)
        new_bases = 0.9 * new_bases + 0.1 * mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)
    recon = bn(conv(F.relu(recon), "decode_head.ema_out_conv.conv"), "decode_head.ema_out_conv.bn")
    out = conv_module(F.relu(identity + recon), "decode_head.bottleneck", 1)
    out = conv_module(torch.cat([x4, out], dim=1), "decode_head.conv_cat", 1)
    logits = conv(out, "decode_head.conv_seg")
    aux = conv(conv_module(features[2], "auxiliary_head.convs.0", 1), "auxiliary_head.conv_seg")

    def resize(y):
        return F.interpolate(y, size=size, mode="bilinear", align_corners=align_corners)

    return resize(logits), resize(aux), new_bases


def save_mmseg_checkpoint(path, state, **meta):
    meta = {"iter": 80000, "CLASSES": tuple(f"class{i}" for i in range(CLASSES)), "PALETTE": [[0, 0, 0]] * CLASSES,
            **meta}
    torch.save({"state_dict": state, "meta": meta}, path)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(mmseg state dict, this project's model loaded from the converted checkpoint, its path)."""
    folder = tmp_path_factory.mktemp("mmseg")
    state = mmseg_state_dict()
    save_mmseg_checkpoint(folder / "emanet_mmseg.pth", state)
    import_checkpoint(folder / "emanet_mmseg.pth", folder / "emanet.pt", EXPERIMENT, OVERRIDES)
    checkpoint = load_checkpoint(folder / "emanet.pt")
    assert checkpoint["iteration"] == 80000
    assert checkpoint["imported_from"] == "mmsegmentation: emanet_mmseg.pth"
    cfg = OmegaConf.create(checkpoint["config"])
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    load_model_weights(model, checkpoint, folder / "emanet.pt")
    return state, model, folder / "emanet.pt"


def test_converted_checkpoint_gives_mmsegs_logits(imported):
    state, model, path = imported
    assert digest_file(path).is_file()
    model.eval()
    x = torch.randn(2, 3, 41, 57, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, expected_aux, _ = mmseg_forward(state, x)
        logits = model(x)
        aux = F.interpolate(model.aux_head(model.backbone(x)), size=(41, 57), mode="bilinear", align_corners=True)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux, expected_aux, rtol=1e-5, atol=1e-5)
    # not a vacuous match: the logits vary over pixels, and align_corners=False would differ
    assert expected.std() > 0.1
    with torch.no_grad():
        half_pixel = F.interpolate(model.head(model.backbone(x)), size=(41, 57), mode="bilinear", align_corners=False)
    assert (half_pixel - expected).abs().max() > 1e-3


def test_eval_stages_sets_the_em_iterations_at_evaluation(imported):
    state, model, _ = imported
    x = torch.randn(1, 3, 41, 57, generator=torch.Generator().manual_seed(2))
    unit = model.head.ema_module
    unit.eval_stages = 1
    try:
        with torch.no_grad():
            one_stage = model.eval()(x)
        expected_one, _, _ = mmseg_forward(state, x, stages=1)
        expected_three, _, _ = mmseg_forward(state, x, stages=3)
    finally:
        unit.eval_stages = 3
    torch.testing.assert_close(one_stage, expected_one, rtol=1e-5, atol=1e-5)
    assert (expected_one - expected_three).abs().max() > 1e-4


def test_a_training_forward_moves_the_bases_as_mmseg_does(imported):
    state, model, _ = imported
    x = torch.randn(2, 3, 41, 57, generator=torch.Generator().manual_seed(3))
    before = model.head.ema_module.bases.clone()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            model.train()(x)
            _, _, expected = mmseg_forward(state, x, training=True)
        after = model.head.ema_module.bases
        assert (after - expected).abs().max() < 1e-6
        assert (after - before).abs().max() > 1e-3
        # the moving average of unit-norm bases shrinks them a little: not renormalised
        assert after.norm(dim=1).max() < 1.0
    finally:
        model.load_state_dict(saved)
        model.eval()


def test_the_frozen_mid_conv_gets_no_gradient_and_the_rest_does(imported):
    _, model, _ = imported
    head = model.head
    assert not any(p.requires_grad for p in head.ema_mid_conv.parameters())
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model.train()
        logits, aux = model(torch.randn(2, 3, 33, 33))
        (logits.mean() + aux.mean()).backward()
        assert head.ema_mid_conv.weight.grad is None
        assert head.ema_in_conv[0].weight.grad.abs().sum() > 0
        assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
        model.eval()


def import_error(tmp_path, state) -> str:
    save_mmseg_checkpoint(tmp_path / "theirs.pth", state)
    with pytest.raises(CheckpointError) as error:
        import_checkpoint(tmp_path / "theirs.pth", tmp_path / "out.pt", EXPERIMENT, OVERRIDES)
    assert not (tmp_path / "out.pt").exists()
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "theirs.pth"))
    return message


def test_a_missing_tensor_is_refused_naming_the_file_and_key(tmp_path):
    state = mmseg_state_dict()
    del state["decode_head.conv_cat.conv.weight"]
    message = import_error(tmp_path, state)
    assert "lacks 1 of the model's tensors (decode_head.conv_cat.conv.weight)" in message


def test_an_unexpected_key_is_refused_naming_the_file_and_key(tmp_path):
    state = mmseg_state_dict()
    state["decode_head.extra.weight"] = torch.zeros(1)
    message = import_error(tmp_path, state)
    assert "has 1 key the model does not (decode_head.extra.weight)" in message


def test_a_wrong_shape_is_refused_naming_the_file_and_key(tmp_path):
    state = mmseg_state_dict()
    state["decode_head.conv_seg.weight"] = torch.zeros(7, CHANNELS, 1, 1)
    message = import_error(tmp_path, state)
    assert message == (
        f"{tmp_path / 'theirs.pth'}: decode_head.conv_seg.weight is (7, 8, 1, 1), the model's "
        "head.conv_seg.weight is (19, 8, 1, 1) (check dataset.num_classes, model.backbone.depth and the "
        "model.ema.* sizes)"
    )


@pytest.mark.slow
def test_the_script_reports_a_foreign_file_in_one_line(tmp_path):
    torch.save({"net": {}}, tmp_path / "release.pth")
    result = subprocess.run(
        [sys.executable, "scripts/import_mmseg_checkpoint.py", str(tmp_path / "release.pth"), str(tmp_path / "x.pt"),
         "--experiment", EXPERIMENT, *OVERRIDES],  # overrides after the option, as the usage line shows
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {tmp_path / 'release.pth'} is not an mmsegmentation checkpoint (a dict with 'state_dict' and "
        "'meta')\n"
    )
    assert not (tmp_path / "x.pt").exists()


def test_objects_beyond_tensors_are_read_only_from_a_trusted_file(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": {"iter": 5, "env": argparse.Namespace()}},
               tmp_path / "theirs.pth")
    with pytest.raises(CheckpointError, match=r"^cannot read .*theirs\.pth: .*--trusted\)$"):
        read_mmseg_checkpoint(tmp_path / "theirs.pth")
    state, meta = read_mmseg_checkpoint(tmp_path / "theirs.pth", trusted=True)
    assert saved_iteration(meta) == 5 and list(state) == ["w"]


def test_v1c_stem_is_32_32_64_with_mmsegs_names():
    stem = ResNet(50, stem="v1c").stem
    convs = [(m.in_channels, m.out_channels, m.stride[0]) for m in stem if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(3, 32, 2), (32, 32, 1), (32, 64, 1)]
    assert [type(m).__name__ for m in stem] == ["Conv2d", "BatchNorm2d", "ReLU"] * 3
    assert ResNet(50, stem="v1c", width=8).layer1[0].conv1.in_channels == 8
    with pytest.raises(ValueError, match="model.backbone.width must be even for model.backbone.stem=v1c"):
        ResNet(50, stem="v1c", width=7)


# One experiment per published mmsegmentation EMANet: (experiment, depth, crops, their
# decode_head align_corners, eval mode, eval windows), from configs/emanet/ of mmsegmentation 1.2.2.
MMSEG_VARIANTS = [
    ("cityscapes_mmseg_r101", 101, 769, True, "slide", (769, 513)),
    ("cityscapes_mmseg_r50", 50, 769, True, "slide", (769, 513)),
    ("cityscapes_mmseg_r101_512x1024", 101, [512, 1024], False, "whole", None),
    ("cityscapes_mmseg_r50_512x1024", 50, [512, 1024], False, "whole", None),
]


@pytest.mark.parametrize("experiment,depth,crop_size,align_corners,eval_mode,windows", MMSEG_VARIANTS)
def test_experiments_compose_to_mmsegs_recipe(experiment, depth, crop_size, align_corners, eval_mode, windows):
    cfg = compose_config("train", [f"experiment={experiment}"])
    assert cfg.name == experiment
    assert cfg.model.head == "ema_mmseg" and cfg.model.backbone.stem == "v1c" and cfg.model.backbone.depth == depth
    assert cfg.model.backbone.pretrained.endswith(f"resnet{depth}_v1c.pth")
    assert cfg.model.aux.weight == 0.4 and cfg.model.align_corners is align_corners and cfg.model.bn_momentum == 0.1
    assert (cfg.model.ema.channels, cfg.model.ema.num_bases, cfg.model.ema.train_stages) == (512, 64, 3)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.bias_lr_mult) == (0.01, 5e-4, 1.0)
    assert (cfg.schedule.iterations, cfg.schedule.batch_size, cfg.schedule.lr_update_every) == (80000, 8, 1)
    assert cfg.loss.normalization == "all_pixels"
    assert (cfg.dataset.name, cfg.dataset.crop_size, list(cfg.dataset.train_scales)) == (
        "cityscapes", crop_size, [0.5, 2.0])
    assert cfg.dataset.scale_sampling == "continuous"
    assert (cfg.eval.mode, cfg.eval.flip, cfg.eval.align_corners) == (eval_mode, True, False)
    # their test: images rescaled by cv2, logits back with the heads' convention, no padded windows
    assert (cfg.eval.logits_align_corners, cfg.eval.pad_to_window) == (align_corners, False)
    if windows is not None:
        assert (cfg.eval.crop_size, cfg.eval.stride) == windows
    assert list(cfg.eval.scales) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    # model.ema.eval_stages follows the training T unless set: the project sweeps it
    assert compose_config("train", [f"experiment={experiment}", "model.ema.train_stages=2"]).model.ema.eval_stages == 2


@pytest.mark.parametrize("experiment,align_corners", [(v[0], v[3]) for v in MMSEG_VARIANTS])
def test_each_variant_upsamples_its_logits_with_its_convention(experiment, align_corners):
    """The logits at input size are the head's output at 1/8 resized with the variant's
    convention, computed from the convention's definition (not from F.interpolate)."""
    cfg = compose_config("train", [f"experiment={experiment}", *OVERRIDES])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False).eval()
    x = torch.randn(2, 3, 41, 57, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model(x)
        low = model.head(model.backbone(x))
    assert low.shape[-2:] == (6, 8) and logits.shape == (2, CLASSES, 41, 57)
    for image, result in zip(low.double().numpy(), logits.double().numpy(), strict=True):
        expected = bilinear_reference(image, 41, 57, align_corners)
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-3)  # float32 logits of about +-1000
        # not vacuous: the other convention gives other logits
        assert np.abs(bilinear_reference(image, 41, 57, not align_corners) - expected).max() > 1e-2


@pytest.mark.parametrize("experiment", [v[0] for v in MMSEG_VARIANTS])
def test_the_loss_is_averaged_over_all_pixels_as_mmsegs(experiment):
    """mmsegmentation's CrossEntropyLoss (avg_non_ignore=False): the summed pixel losses of
    the labelled pixels over every pixel of the batch; the auxiliary head's times 0.4."""
    cfg = compose_config("train", [f"experiment={experiment}"])
    g = torch.Generator().manual_seed(5)
    logits, aux = torch.randn(2, 2, 19, 8, 8, generator=g).double()
    labels = torch.randint(0, 19, (2, 8, 8), generator=g)
    labels[:, :4, 4:] = 255  # a quarter ignored
    divisor = loss_divisor([labels], 255, cfg.loss.normalization)
    loss = training_loss((logits, aux), labels, 255, divisor, cfg.model.aux.weight)

    def definition(scores):  # -log softmax at the label, 0 where ignored, over all 128 pixels
        total = 0.0
        for b, i, j in np.ndindex(2, 8, 8):
            label = int(labels[b, i, j])
            if label != 255:
                column = scores[b, :, i, j].numpy()
                total += np.log(np.exp(column).sum()) - column[label]
        return total / labels.numel()

    expected = definition(logits) + 0.4 * definition(aux)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    labelled = (labels != 255).double().mean().item()
    assert labelled == 0.75  # averaged over labelled pixels it would be 4/3 as large
    valid = training_loss((logits, aux), labels, 255, loss_divisor([labels], 255, "valid"), 0.4)
    assert float(valid) == pytest.approx(expected / labelled, rel=1e-12)


# The config text mmsegmentation records in a checkpoint's meta (cfg.pretty_text): 'config'
# for 0.x, 'cfg' for 1.x; an excerpt in their layout.
def recorded_config(crop_size, align_corners):
    return f"""norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained='open-mmlab://resnet50_v1c',
    backbone=dict(
        type='ResNetV1c',
        depth=50,
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(
        type='EMAHead',
        in_channels=2048,
        channels=256,
        ema_channels=512,
        num_bases=64,
        num_stages=3,
        momentum=0.1,
        align_corners={align_corners},
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type='FCNHead', in_channels=1024, align_corners={align_corners}),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
dataset_type = 'CityscapesDataset'
data_root = 'data/cityscapes/'
crop_size = {crop_size}
train_pipeline = [
    dict(type='RandomCrop', crop_size={crop_size}, cat_max_ratio=0.75),
]
"""


def test_the_recorded_recipe_is_read_from_either_releases_meta_without_running_it():
    text = recorded_config((769, 769), True)
    assert recorded_recipe({"config": text}) == RecordedRecipe((769, 769), True)
    assert recorded_recipe({"cfg": recorded_config((512, 1024), False)}) == RecordedRecipe((512, 1024), False)
    assert recorded_recipe({}) == RecordedRecipe() == recorded_recipe({"config": "not python ("})
    assert recorded_recipe({"config": "import os\nos.remove('x')\n"}) == RecordedRecipe()


@pytest.mark.slow
@pytest.mark.parametrize("meta_key", ["config", "cfg"])
def test_a_checkpoint_of_another_recipe_is_refused_naming_the_experiment_to_use(tmp_path, meta_key):
    state = mmseg_state_dict()
    save_mmseg_checkpoint(tmp_path / "theirs.pth", state, **{meta_key: recorded_config((512, 1024), False)})
    with pytest.raises(CheckpointError) as error:
        import_checkpoint(tmp_path / "theirs.pth", tmp_path / "out.pt", EXPERIMENT, OVERRIDES)
    assert str(error.value) == (
        f"{tmp_path / 'theirs.pth'}: its recorded config trained with 512x1024 crops (the experiment's: 769x769) "
        "and align_corners=False (the experiment's: True): it is not experiment=cityscapes_mmseg_r50's model; "
        "import it with --experiment cityscapes_mmseg_r101_512x1024 or cityscapes_mmseg_r50_512x1024"
    )
    assert not (tmp_path / "out.pt").exists()
    import_checkpoint(tmp_path / "theirs.pth", tmp_path / "out.pt", "cityscapes_mmseg_r50_512x1024", OVERRIDES)
    assert load_checkpoint(tmp_path / "out.pt")["config"]["name"] == "cityscapes_mmseg_r50_512x1024"
    # one setting contradicting is enough
    save_mmseg_checkpoint(tmp_path / "corners.pth", state, **{meta_key: recorded_config((769, 769), False)})
    with pytest.raises(CheckpointError, match=r"align_corners=False \(the experiment's: True\): it is not"):
        import_checkpoint(tmp_path / "corners.pth", tmp_path / "out2.pt", EXPERIMENT, OVERRIDES)
    save_mmseg_checkpoint(tmp_path / "match.pth", state, **{meta_key: recorded_config((769, 769), True)})
    import_checkpoint(tmp_path / "match.pth", tmp_path / "out3.pt", EXPERIMENT, OVERRIDES)


def test_emanet_mmseg_builds_mmsegs_d8_backbone_and_head():
    cfg = compose_config(
        "train", ["experiment=voc_emanet512", "model=emanet_mmseg", "model.backbone.width=8", "model.ema.channels=16"]
    )
    model = build_model(cfg.model, num_classes=3, load_pretrained=False)
    backbone = model.backbone
    assert [block.conv2.dilation[0] for block in backbone.layer3] == [1] + [2] * 22
    assert [block.conv2.dilation[0] for block in backbone.layer4] == [2, 4, 4]
    assert [layer[0].conv2.stride[0] for layer in (backbone.layer1, backbone.layer2, backbone.layer3,
                                                   backbone.layer4)] == [1, 2, 1, 1]
    assert backbone.stem[6].out_channels == 8 and model.head.conv_cat[0].in_channels == 8 * 8 * 4 + 256
    assert model.aux_head is not None and model.aux_head.conv[0].in_channels == 8 * 4 * 4
    assert model.align_corners is False
    cfg.model.backbone.stem = "v2"
    with pytest.raises(ConfigError, match=r"model.backbone.stem=v2: expected one of deep, v1c, torchvision"):
        from emanet.config_checks import check_config

        check_config(cfg)


def test_mmsegs_imagenet_v1c_weights_load_as_the_pretrained_backbone(tmp_path):
    # Their ImageNet ResNetV1c files hold stem.*, layer*.* and the classifier fc.*.
    source = ResNet(50, stem="v1c", width=WIDTH)
    torch.nn.init.normal_(source.stem[0].weight)
    weights = {**source.state_dict(), "fc.weight": torch.zeros(1000, 32 * WIDTH), "fc.bias": torch.zeros(1000)}
    torch.save({"state_dict": weights}, tmp_path / "resnet50_v1c.pth")
    cfg = compose_config("train", [f"experiment={EXPERIMENT}", *OVERRIDES,
                                   f"model.backbone.pretrained={tmp_path / 'resnet50_v1c.pth'}"])
    model = build_model(cfg.model, cfg.dataset.num_classes)
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
