"""The Python API: ``from emanet import Segmenter``, and torch.hub's entry points."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import QUIET, run_entry_point, write_demo_run, write_photo
from PIL import Image
from tests_paths import REPO

from emanet import Segmenter
from emanet.data.palette import color_map
from emanet.data.segmentation import EXIF_ORIENTATION, read_image
from emanet.data.transforms import eval_transform
from emanet.engine import segmenter as segmenter_module
from emanet.engine.checkpoint import save_checkpoint
from emanet.engine.evaluator import eval_inference, predict
from emanet.errors import CheckpointError, ConfigError

DEMO_CLASSES = ["background", "disc", "ring", "square", "cross"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg, model = write_demo_run(run_dir)
    return run_dir, cfg, model


def expected_probabilities(cfg, model, pixels, scales=None, flip=None):
    """The evaluator's probabilities (classes, H, W) of RGB pixels: the reference."""
    image = eval_transform(cfg.dataset.mean, cfg.dataset.std)(image=pixels)["image"][None]
    scales = cfg.eval.scales if scales is None else scales
    flip = cfg.eval.flip if flip is None else flip
    probabilities, _ = predict(model, image, scales, flip, eval_inference(cfg))
    return probabilities[0].numpy()


def test_three_lines_segment_a_photo_as_the_evaluation_protocol_does(run, tmp_path):
    run_dir, cfg, model = run
    write_photo(tmp_path / "photo.jpg", 70, 90, seed=1)

    seg = Segmenter.from_checkpoint(run_dir, backend="pytorch")
    mask = seg.predict(tmp_path / "photo.jpg")
    probs = seg.predict(str(tmp_path / "photo.jpg"), probabilities=True)

    expected = expected_probabilities(cfg, model, read_image(tmp_path / "photo.jpg"))
    assert mask.shape == (70, 90) and mask.dtype == np.uint8
    assert probs.shape == (5, 70, 90) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_array_equal(mask, expected.argmax(0))
    assert len(np.unique(mask)) > 1
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    # the run's protocol: the demo's multi-scale + flip in 64-pixel windows, T=3, on the CPU
    assert (seg.cfg.eval.mode, list(seg.cfg.eval.scales), seg.cfg.eval.flip) == (
        "slide", [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], True)
    assert seg.eval_stages == 3 and seg.device == torch.device("cpu") and seg.trained == {"iteration": 7}
    assert seg.source == (run_dir / "checkpoints" / "last.pt").resolve()


def test_every_kind_of_input_gives_the_mask_of_its_pixels(run, tmp_path):
    run_dir, _, _ = run
    seg = Segmenter.from_checkpoint(run_dir, eval="ss", backend="pytorch")
    pixels = np.random.default_rng(2).integers(0, 256, (50, 61, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    expected = seg.predict(pixels)

    same = {
        "path": seg.predict(tmp_path / "photo.png"),
        "PIL": seg.predict(Image.fromarray(pixels)),
        "RGBA array": seg.predict(np.dstack([pixels, np.full((50, 61), 7, np.uint8)])),
        "uint8 tensor": seg.predict(torch.from_numpy(pixels).permute(2, 0, 1)),
    }
    for kind, mask in same.items():
        np.testing.assert_array_equal(mask, expected, err_msg=kind)
    # a float tensor in [0, 1] (torchvision's to_tensor) is normalised in float: the same
    # probabilities to within float rounding
    as_float = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    np.testing.assert_allclose(seg.predict(as_float, probabilities=True), seg.predict(pixels, probabilities=True),
                               atol=1e-5)
    grey = pixels[..., 0]
    np.testing.assert_array_equal(seg.predict(grey), seg.predict(np.dstack([grey] * 3)))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(seg.predict(tmp_path / "grey.png"), seg.predict(np.dstack([grey] * 3)))
    # 16 bits: scaled to 8 as the datasets and predict.py read such files
    sixteen = grey.astype(np.uint16) * 257
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(seg.predict(tmp_path / "deep.png"), seg.predict(grey))
    np.testing.assert_array_equal(seg.predict(sixteen), seg.predict(grey))
    with pytest.raises(ValueError, match="float32"):
        seg.predict(pixels.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        seg.predict(torch.rand(61, 50, 3))


def test_a_photo_path_is_turned_upright_as_its_exif_orientation_says(run, tmp_path):
    run_dir, _, _ = run
    seg = Segmenter.from_checkpoint(run_dir, eval="ss", backend="pytorch")
    stored = np.random.default_rng(3).integers(0, 256, (40, 66, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # shown turned a quarter clockwise: 66 tall, 40 wide
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)

    mask = seg.predict(tmp_path / "phone.png")

    assert mask.shape == (66, 40)
    np.testing.assert_array_equal(mask, seg.predict(np.rot90(stored, k=-1)))


def test_a_batch_of_any_sizes_comes_back_in_order(run):
    run_dir, _, _ = run
    seg = Segmenter.from_checkpoint(run_dir, eval="ss", backend="pytorch")
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(40, 50, 3), (33, 70, 3), (40, 50, 3)]]

    masks = seg.predict_batch(images, batch_size=2)

    assert [mask.shape for mask in masks] == [(40, 50), (33, 70), (40, 50)]
    for image, mask in zip(images, masks, strict=True):
        np.testing.assert_array_equal(mask, seg.predict(image))
    probabilities = seg.predict_batch(images[:2], probabilities=True)
    assert [p.shape for p in probabilities] == [(5, 40, 50), (5, 33, 70)]


def test_the_protocol_and_t_are_chosen_by_name(run, tmp_path):
    run_dir, cfg, model = run
    pixels = np.random.default_rng(5).integers(0, 256, (45, 52, 3), dtype=np.uint8)

    single = Segmenter.from_checkpoint(run_dir, eval="ss", backend="pytorch")
    assert (single.cfg.eval.mode, list(single.cfg.eval.scales), single.cfg.eval.flip) == ("whole", [1.0], False)
    np.testing.assert_allclose(
        single.predict(pixels, probabilities=True), expected_probabilities(single.cfg, model, pixels), atol=1e-5)

    five = Segmenter.from_checkpoint(run_dir, eval="ss", eval_stages=5, backend="pytorch")
    assert five.eval_stages == 5 and five.network.head.ema.eval_stages == 5
    assert not np.allclose(five.predict(pixels, probabilities=True), single.predict(pixels, probabilities=True))

    with pytest.raises(ConfigError, match="eval=nope: no such evaluation preset; choose one of ms_flip, "):
        Segmenter.from_checkpoint(run_dir, eval="nope")
    with pytest.raises(ConfigError, match="backend=tensorrt: choose one of pytorch, onnxruntime"):
        Segmenter.from_checkpoint(run_dir, backend="tensorrt")
    fcn_run = tmp_path / "fcn"
    write_demo_run(fcn_run, ["experiment=demo", "model=fcn"])
    with pytest.raises(ConfigError, match="eval_stages=5: model.head=fcn has no EM iterations"):
        Segmenter.from_checkpoint(fcn_run, eval_stages=5)


def test_classes_palette_colorize_and_overlay(run):
    run_dir, _, _ = run
    seg = Segmenter.from_checkpoint(run_dir, eval="ss", backend="pytorch")
    image = np.random.default_rng(6).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mask = seg.predict(image)

    assert seg.classes == DEMO_CLASSES
    np.testing.assert_array_equal(seg.palette, color_map()[:5])
    colours = seg.colorize(mask)
    assert colours.shape == (30, 40, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours, color_map()[mask])
    overlay = seg.overlay(image, mask)
    np.testing.assert_array_equal(overlay, (0.5 * image + 0.5 * color_map()[mask]).astype(np.uint8))
    with pytest.raises(ValueError, match="must match"):
        seg.overlay(image[:20], mask)


def test_a_dataset_of_ones_own_brings_its_class_colours(tmp_path):
    colours = [[0, 0, 0], [10, 200, 30], [250, 5, 5], [1, 2, 3], [9, 9, 9]]
    names = ["sky", "tree", "road", "car", "person"]
    write_demo_run(tmp_path, [f"dataset.class_names=[{','.join(names)}]", f"+dataset.class_colors={colours}"])

    seg = Segmenter.from_checkpoint(tmp_path, backend="pytorch")

    assert seg.classes == names
    np.testing.assert_array_equal(seg.palette, np.array(colours, np.uint8))
    np.testing.assert_array_equal(seg.colorize(np.array([[1, 2]])), np.array([[[10, 200, 30], [250, 5, 5]]]))


def test_a_checkpoint_file_alone_is_built_from_the_config_it_records(run, tmp_path):
    run_dir, cfg, model = run
    alone = tmp_path / "copied.pt"
    shutil.copy(run_dir / "checkpoints" / "last.pt", alone)
    shutil.copy(run_dir / "checkpoints" / "last.pt.sha256", tmp_path / "copied.pt.sha256")
    pixels = np.random.default_rng(7).integers(0, 256, (36, 44, 3), dtype=np.uint8)

    seg = Segmenter.from_checkpoint(alone, eval="ss", backend="pytorch")

    np.testing.assert_array_equal(seg.predict(pixels), expected_probabilities(seg.cfg, model, pixels).argmax(0))
    bare = tmp_path / "bare.pt"
    save_checkpoint({"model": model.state_dict(), "iteration": 1}, bare)
    with pytest.raises(CheckpointError, match=f"{bare}: no config.yaml beside it .* records no config"):
        Segmenter.from_checkpoint(bare)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Segmenter.from_checkpoint(tmp_path / "missing")


def test_a_run_from_before_a_key_was_renamed_loads(tmp_path):
    write_demo_run(tmp_path)
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text.replace("reduce_zero_label:", "ignore_background:"))

    seg = Segmenter.from_checkpoint(tmp_path, backend="pytorch")

    assert seg.cfg.dataset.reduce_zero_label is False and "ignore_background" not in seg.cfg.dataset


def test_the_cpu_default_is_the_fastest_agreeing_backend_and_falls_back_without_the_export_extra(
    run, monkeypatch
):
    run_dir, _, _ = run
    monkeypatch.setattr(segmenter_module, "onnx_export_available", lambda: False)

    seg = Segmenter.from_checkpoint(run_dir)

    assert seg.backend == "pytorch" and seg.amp.channels_last and seg.amp.dtype is None
    # the default is the published measurement's fastest backend that agrees, for EMANet(512)
    # R101 at batch 1, the case the default is chosen for (docs/benchmarks.jsonl)
    records = [json.loads(line) for line in (REPO / "docs" / "benchmarks.jsonl").read_text().splitlines()]
    measured = [record for record in records if record["benchmark"] == "infer"][-1]
    (chosen,) = [entry["variant"] for entry in measured["fastest_agreeing"]
                 if entry["model"].startswith("voc_emanet512 R101") and entry["batch"] == 1]
    assert chosen == segmenter_module.CPU_DEFAULT_BACKEND
    fallback = [row for row in measured["rows"] if row["model"].startswith("voc_emanet512 R101") and row["batch"] == 1
                and row["variant"] in ("eager", "channels_last")]
    fastest_pytorch = max(fallback, key=lambda row: row["images_per_second"])["variant"]
    assert segmenter_module.CPU_FALLBACK["channels_last"] == (fastest_pytorch == "channels_last")


def test_torch_hub_loads_a_run_and_lists_the_importable_experiments(run):
    run_dir, _, _ = run

    seg = torch.hub.load(str(REPO), "emanet", checkpoint=str(run_dir), eval="ss", backend="pytorch", source="local")

    assert isinstance(seg, Segmenter) and seg.classes == DEMO_CLASSES
    # torch.hub.list and torch.hub.help read GitHub repositories only; what they show is
    # hubconf's public callables and their docstrings
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {name: entry for name, entry in vars(hubconf).items() if callable(entry) and not name.startswith("_")}
    assert set(entries) == {
        "emanet", "voc_release", "cityscapes_mmseg_r101", "cityscapes_mmseg_r50", "cityscapes_mmseg_r101_512x1024",
        "cityscapes_mmseg_r50_512x1024",
    }
    assert "python scripts/import_official_checkpoint.py SRC.pth DST.pt --experiment voc_release" in (
        entries["voc_release"].__doc__)
    for name in entries:
        if name.startswith("cityscapes"):
            assert f"python scripts/import_mmseg_checkpoint.py SRC.pth DST.pt --experiment {name}\n" in (
                entries[name].__doc__)
    with pytest.raises(ValueError, match="holds a model of experiment demo, not voc_release"):
        torch.hub.load(str(REPO), "voc_release", checkpoint=str(run_dir), backend="pytorch", source="local")


@pytest.mark.slow
def test_predict_py_writes_what_the_segmenter_predicts(run, tmp_path):
    run_dir, _, _ = run
    write_photo(tmp_path / "photos" / "a.png", 70, 90, seed=8)
    write_photo(tmp_path / "photos" / "b.jpg", 64, 48, seed=9)

    result = run_entry_point(
        "scripts/predict.py", f"checkpoint={run_dir}", f"input={tmp_path / 'photos'}", *QUIET,
        f"hydra.run.dir={tmp_path / 'out'}",
    )

    assert result.returncode == 0, result.stderr[-2000:]
    seg = Segmenter.from_checkpoint(run_dir, backend="pytorch")
    seg.cfg.eval.scales = [0.75, 1.0]  # QUIET's
    for name, file in [("a", "a.png"), ("b", "b.jpg")]:
        with Image.open(tmp_path / "out" / "predictions" / f"{name}.png") as png:
            np.testing.assert_array_equal(np.array(png), seg.predict(tmp_path / "photos" / file))
