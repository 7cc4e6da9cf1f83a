"""Importing the authors' checkpoint: converted weights must give the release's logits.

The reference below is a functional forward pass written from the description of the
release (github.com/XiaLiPKU/EMANet, network.py; Li et al., ICCV 2019, arXiv:1907.13426),
reading the release's own key names.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from random_weights import RandomWeights

from emanet.data.palette import read_label_png, save_label_png
from emanet.engine.checkpoint import load_checkpoint, load_model_weights
from emanet.errors import CheckpointError
from emanet.importers.release import import_checkpoint
from emanet.models.segmentor import build_model

REPO = Path(__file__).resolve().parents[1]

WIDTH, C_EMA, K, MID, CLASSES = 8, 16, 4, 8, 21
BLOCKS = (3, 4, 6, 3)  # ResNet-50
OVERRIDES = [
    "model.backbone.depth=50", f"model.backbone.width={WIDTH}", f"model.ema.channels={C_EMA}",
    f"model.ema.num_bases={K}", f"model.mid_channels={MID}",
]


def release_state_dict(seed=0):
    weights = RandomWeights(seed, batches_tracked=100)
    g, state, conv, bn = weights.generator, weights.state, weights.conv, weights.bn

    conv("extractor.0.0", WIDTH, 3, 3)
    bn("extractor.0.1", WIDTH)
    conv("extractor.0.3", WIDTH, WIDTH, 3)
    bn("extractor.0.4", WIDTH)
    conv("extractor.0.6", 2 * WIDTH, WIDTH, 3)
    bn("extractor.1", 2 * WIDTH)
    in_c = weights.bottleneck_stages(lambda stage: f"extractor.{4 + stage}", 2 * WIDTH, WIDTH, BLOCKS)
    conv("fc0.conv", C_EMA, in_c, 3)
    bn("fc0.bn", C_EMA)
    mu = torch.randn(1, C_EMA, K, generator=g)
    state["emau.mu"] = mu / (1e-6 + mu.norm(dim=1, keepdim=True))
    conv("emau.conv1", C_EMA, C_EMA, 1, bias=True)
    conv("emau.conv2.0", C_EMA, C_EMA, 1)
    bn("emau.conv2.1", C_EMA)
    conv("fc1.0.conv", MID, C_EMA, 3)
    bn("fc1.0.bn", MID)
    conv("fc2", CLASSES, MID, 1, bias=True)
    return state


def release_forward(s, x, stages=3):
    def bn(y, p):
        return F.batch_norm(y, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                            False, 0.0, 1e-5)

    def conv(y, p, stride=1, padding=0, dilation=1):
        return F.conv2d(y, s[f"{p}.weight"], s.get(f"{p}.bias"), stride, padding, dilation)

    height, width = x.shape[-2:]
    y = F.relu(bn(conv(x, "extractor.0.0", 2, 1), "extractor.0.1"))
    y = F.relu(bn(conv(y, "extractor.0.3", 1, 1), "extractor.0.4"))
    y = F.max_pool2d(F.relu(bn(conv(y, "extractor.0.6", 1, 1), "extractor.1")), 3, 2, 1)
    # Output stride 8: layer3 dilations 1, 2, 2, ...; layer4 (multi-grid) 2, 8, 16.
    layout = [(1, [1] * 3), (2, [1] * 4), (1, [1] + [2] * 5), (1, [2, 8, 16])]
    for layer, (stride, dilations) in enumerate(layout):
        for block, dilation in enumerate(dilations):
            p = f"extractor.{4 + layer}.{block}"
            block_stride = stride if block == 0 else 1
            out = F.relu(bn(conv(y, f"{p}.conv1"), f"{p}.bn1"))
            out = F.relu(bn(conv(out, f"{p}.conv2", block_stride, dilation, dilation), f"{p}.bn2"))
            out = bn(conv(out, f"{p}.conv3"), f"{p}.bn3")
            identity = bn(conv(y, f"{p}.downsample.0", block_stride), f"{p}.downsample.1") if block == 0 else y
            y = F.relu(out + identity)
    y = F.relu(bn(conv(y, "fc0.conv", 1, 1), "fc0.bn"))
    identity = y
    features = conv(y, "emau.conv1")
    b, c, h, w = features.shape
    features = features.view(b, c, h * w)
    mu = s["emau.mu"].repeat(b, 1, 1)
    for _ in range(stages):
        z = torch.softmax(torch.bmm(features.permute(0, 2, 1), mu), dim=2)
        mu = torch.bmm(features, z / (1e-6 + z.sum(dim=1, keepdim=True)))
        mu = mu / (1e-6 + mu.norm(dim=1, keepdim=True))
    y = F.relu(mu.matmul(z.permute(0, 2, 1)).view(b, c, h, w))
    y = F.relu(bn(conv(y, "emau.conv2.0"), "emau.conv2.1") + identity)
    y = F.relu(bn(conv(y, "fc1.0.conv", 1, 1), "fc1.0.bn"))
    y = conv(y, "fc2")
    return F.interpolate(y, size=(height, width), mode="bilinear", align_corners=True)


def test_imported_checkpoint_reproduces_the_release_logits(tmp_path):
    state = release_state_dict()
    torch.save({"net": {f"module.{k}": v for k, v in state.items()}, "step": 30000}, tmp_path / "release.pth")
    import_checkpoint(tmp_path / "release.pth", tmp_path / "emanet.pt", "voc_emanet512", OVERRIDES)

    checkpoint = load_checkpoint(tmp_path / "emanet.pt")
    assert checkpoint["iteration"] == 30000
    cfg = OmegaConf.create(checkpoint["config"])
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    load_model_weights(model, checkpoint, tmp_path / "emanet.pt")
    model.eval()
    x = torch.randn(2, 3, 41, 57)
    with torch.no_grad():
        expected = release_forward(state, x)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_import_refuses_a_checkpoint_of_another_architecture(tmp_path):
    state = release_state_dict()
    torch.save({"net": state, "step": 1}, tmp_path / "release.pth")
    with pytest.raises(CheckpointError, match=r"does not fit experiment=voc_emanet512: size mismatch for "
                                              r"head\.reduce\.0\.weight: .*; and 13 more"):
        import_checkpoint(tmp_path / "release.pth", tmp_path / "out.pt", "voc_emanet512",
                          [o.replace("model.ema.channels=16", "model.ema.channels=32") for o in OVERRIDES])
    assert not (tmp_path / "out.pt").exists()


def test_keys_the_release_does_not_have_are_refused_naming_the_file(tmp_path):
    from emanet.models.release import read_release_checkpoint

    state = release_state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save({"net": state, "step": 1}, tmp_path / "release.pth")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'release.pth'}: keys the release's EMANet does not "
                                              r"have: \['extra.weight'\]$"):
        read_release_checkpoint(tmp_path / "release.pth")


@pytest.mark.slow
def test_import_script_reports_a_foreign_file(tmp_path):
    torch.save({"weights": {}}, tmp_path / "other.pth")
    result = subprocess.run(
        [sys.executable, "scripts/import_official_checkpoint.py", str(tmp_path / "other.pth"), str(tmp_path / "x.pt")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "is not a release checkpoint (a dict with 'net' and 'step')" in result.stderr


RELEASE_MEAN = np.array([0.485, 0.456, 0.406])
RELEASE_STD = np.array([0.229, 0.224, 0.225])


def release_fetch(image_path):
    """The release's current ``fetch()`` for an image (dataset.py since its commit f2afd7f):
    Pillow RGB, /255, (x - MEAN) / STD, CHW."""
    image = np.array(Image.open(image_path).convert("RGB"), dtype=np.float64) / 255
    return torch.from_numpy(((image - RELEASE_MEAN) / RELEASE_STD).transpose(2, 0, 1)).float()


def release_eval_prediction(state, image_path):
    """The release's ``eval.py`` for one image: fetch, pad bottom/right to H, W = 1 (mod 8)
    with zeros, forward, crop the logits back, argmax."""
    image = release_fetch(image_path)[None]
    height, width = image.shape[-2:]
    padded = F.pad(image, (0, (1 - width) % 8, 0, (1 - height) % 8))
    with torch.no_grad():
        logits = release_forward(state, padded)[..., :height, :width]
    return logits.argmax(1)[0].numpy()


def test_release_experiment_feeds_the_weights_the_release_input(tmp_path):
    from emanet.cli import compose_config
    from emanet.data.segmentation import read_image
    from emanet.data.transforms import eval_transform

    cfg = compose_config("evaluate", ["experiment=voc_release", "checkpoint=x"])
    assert cfg.eval.mode == "release" and cfg.eval.scales == [1.0] and not cfg.eval.flip
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.jpg", quality=90)
    ours = eval_transform(cfg.dataset.mean, cfg.dataset.std)(image=read_image(tmp_path / "image.jpg"))["image"]
    torch.testing.assert_close(ours, release_fetch(tmp_path / "image.jpg"), rtol=1e-6, atol=1e-6)


def write_voc_val(root, ids, sizes, seed=0):
    """VOC val in the trainaug layout of dataset=voc_aug (JPEGImages, SegmentationClassAug)."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for image_id, size in zip(ids, sizes, strict=True):
        # Smooth colour fields: the network sees structure, not only noise.
        yy, xx = np.mgrid[: size[0], : size[1]]
        image = np.stack([(xx * 7 + c * 40) % 256 for c in range(3)], axis=-1) + rng.integers(0, 40, (*size, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        label = rng.integers(0, CLASSES, size=size, dtype=np.uint8)
        save_label_png(label, root / "SegmentationClassAug" / f"{image_id}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")


@pytest.mark.slow
def test_evaluating_the_converted_checkpoint_predicts_what_the_release_eval_script_predicts(tmp_path):
    from emanet.cli import compose_config
    from emanet.engine.evaluate import evaluate_checkpoint

    state = release_state_dict(seed=3)
    torch.save({"net": {f"module.{k}": v for k, v in state.items()}, "step": 30000}, tmp_path / "release.pth")
    import_checkpoint(tmp_path / "release.pth", tmp_path / "emanet.pt", "voc_release", OVERRIDES)
    voc = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    ids, sizes = ["2007_000033", "2007_000042", "2007_000061"], [(37, 45), (41, 33), (30, 52)]
    write_voc_val(voc, ids, sizes)
    cfg = compose_config("evaluate", [
        "experiment=voc_release", *OVERRIDES, f"checkpoint={tmp_path / 'emanet.pt'}", f"data_root={tmp_path / 'data'}",
        "eval.save_predictions=true", "runtime.num_workers=0", "runtime.progress=false",
    ])
    (tmp_path / "run").mkdir()
    metrics = evaluate_checkpoint(cfg, tmp_path / "run")
    assert metrics["eval"]["mode"] == "release" and metrics["eval"]["num_images"] == 3
    # metrics.json says whose weights ran (paper_tables.py tells trained from imported runs by it)
    assert metrics["imported_from"] == "the authors' release: release.pth"
    classes_seen = set()
    for image_id in ids:
        ours = read_label_png(tmp_path / "run" / "predictions" / f"{image_id}.png")
        release = release_eval_prediction(state, voc / "JPEGImages" / f"{image_id}.jpg")
        np.testing.assert_array_equal(ours, release, err_msg=image_id)
        classes_seen |= set(np.unique(release).tolist())
    assert len(classes_seen) > 2  # random weights that do not predict one class everywhere


def test_the_converted_checkpoint_is_a_segmenter_that_predicts_what_the_release_predicts(tmp_path):
    from emanet import Segmenter

    state = release_state_dict(seed=3)
    torch.save({"net": {f"module.{k}": v for k, v in state.items()}, "step": 30000}, tmp_path / "release.pth")
    import_checkpoint(tmp_path / "release.pth", tmp_path / "emanet.pt", "voc_release", OVERRIDES)
    write_voc_val(tmp_path / "voc", ["a", "b"], [(37, 45), (30, 52)])

    # from the config the converted file records; through torch.hub's entry point of its experiment
    direct = Segmenter.from_checkpoint(tmp_path / "emanet.pt", backend="pytorch")
    hub = torch.hub.load(str(REPO), "voc_release", checkpoint=str(tmp_path / "emanet.pt"), backend="pytorch",
                         source="local")

    assert direct.cfg.name == "voc_release" and direct.cfg.eval.mode == "release" and len(direct.classes) == 21
    assert direct.trained == {"iteration": 30000, "imported_from": "the authors' release: release.pth"}
    for image_id in ("a", "b"):
        image = tmp_path / "voc" / "JPEGImages" / f"{image_id}.jpg"
        release = release_eval_prediction(state, image)
        np.testing.assert_array_equal(direct.predict(image), release, err_msg=image_id)
        np.testing.assert_array_equal(hub.predict(image), release, err_msg=image_id)
