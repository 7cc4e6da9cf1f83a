"""scripts/predict.py: segmenting image files with a checkpoint."""

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import QUIET, run_entry_point, save_random_model, write_photo
from PIL import Image

from emanet.cli import compose_config
from emanet.data.segmentation import read_image
from emanet.data.transforms import eval_transform
from emanet.engine import predict as predict_module
from emanet.engine.checkpoint import save_checkpoint
from emanet.engine.evaluator import eval_inference, predict
from emanet.engine.predict import find_images, full_resolution_classes, predict_files
from emanet.errors import CheckpointError, ConfigError, DatasetError
from emanet.models.segmentor import build_model


@pytest.fixture
def checkpoint(tmp_path):
    """A demo-sized model with random weights, in this project's checkpoint format."""
    path = tmp_path / "model.pt"
    return path, save_random_model(path)


@pytest.mark.slow
def test_every_image_found_is_segmented_as_the_evaluator_segments_it(tmp_path, checkpoint):
    path, model = checkpoint
    photos = tmp_path / "photos"
    write_photo(photos / "a.png", 70, 90, seed=1)
    write_photo(photos / "sub" / "b.jpg", 64, 80, seed=2)
    (photos / "notes.txt").write_text("not an image")
    write_photo(tmp_path / "c.bmp", 66, 66, seed=3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose_config("predict", [f"checkpoint={path}", f"input=[{photos},{tmp_path / 'c.bmp'}]", *QUIET])

    summary = predict_files(cfg, run_dir)

    sources = {"a": photos / "a.png", "sub/b": photos / "sub" / "b.jpg", "c": tmp_path / "c.bmp"}
    assert summary["images"] == {sample_id: str(file) for sample_id, file in sources.items()}
    assert json.loads((run_dir / "predictions.json").read_text()) == summary
    assert summary["iteration"] == 7 and summary["classes"][0] == "background"
    assert summary["eval"] == {
        "mode": "slide", "scales": [0.75, 1.0], "flip": True, "crop_size": 64, "stride": 48, "align_corners": False,
        "logits_align_corners": False, "pad_to_window": True,
        "eval_stages": 3, "output_stride": 8, "precision": "float32",
    }
    assert (run_dir / "config.yaml").is_file()
    model.eval()
    transform = eval_transform(cfg.dataset.mean, cfg.dataset.std)
    classes_seen = set()
    for sample_id, file in sources.items():
        image = transform(image=read_image(file))["image"]
        probabilities, _ = predict(model, image[None], [0.75, 1.0], True, eval_inference(cfg))
        expected = probabilities.argmax(1)[0].numpy()
        with Image.open(run_dir / "predictions" / f"{sample_id}.png") as png:
            assert png.mode == "P"
            np.testing.assert_array_equal(np.array(png), expected)
        with Image.open(run_dir / "overlays" / f"{sample_id}.jpg") as overlay:
            assert overlay.size == (image.shape[2], image.shape[1])
        classes_seen |= set(np.unique(expected).tolist())
    assert len(classes_seen) > 1  # the comparison is not between constant maps


def test_inputs_that_cannot_be_segmented_are_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"input={tmp_path / 'missing'}: no such file or folder"):
        find_images([str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match=f"input={tmp_path / 'empty'}: .* holds no image files"):
        find_images([str(tmp_path / "empty")])
    write_photo(tmp_path / "x" / "a.jpg", 8, 8, seed=0)
    write_photo(tmp_path / "y" / "a.png", 8, 8, seed=0)
    with pytest.raises(ConfigError, match="would both be written as a.png"):
        find_images([str(tmp_path / "x"), str(tmp_path / "y" / "a.png")])


def test_an_undecodable_image_is_named(tmp_path, checkpoint):
    path, _ = checkpoint
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    cfg = compose_config("predict", [f"checkpoint={path}", f"input={tmp_path / 'broken.jpg'}", *QUIET])
    with pytest.raises(DatasetError, match=f"{tmp_path / 'broken.jpg'}: cannot decode the image"):
        predict_files(cfg, tmp_path)


def test_a_run_that_would_write_nothing_is_refused(tmp_path, checkpoint):
    path, _ = checkpoint
    write_photo(tmp_path / "a.png", 8, 8, seed=0)
    with pytest.raises(ConfigError, match="^eval.save_predictions and eval.save_overlays are both false: nothing "
                                          "would be written$"):
        compose_config("predict", [
            f"checkpoint={path}", f"input={tmp_path / 'a.png'}", "eval.save_predictions=false",
            "eval.save_overlays=false", *QUIET,
        ])


def test_a_checkpoint_of_another_model_is_refused_with_the_tensor_that_differs(tmp_path):
    cfg = compose_config("train", ["dataset.num_classes=6", "dataset.class_names=[a,b,c,d,e,f]"])
    other = build_model(cfg.model, 6, load_pretrained=False)
    save_checkpoint({"model": other.state_dict(), "config": {"name": "other"}}, tmp_path / "other.pt")
    write_photo(tmp_path / "a.png", 8, 8, seed=0)
    cfg = compose_config("predict", [f"checkpoint={tmp_path / 'other.pt'}", f"input={tmp_path / 'a.png'}", *QUIET])
    message = (
        r"was trained with experiment=other and does not fit the configured model: pass experiment=other .*"
        r"size mismatch for head\.classifier\.weight: copying a param with shape torch\.Size\(\[6, 64, 1, 1\]\) "
        r"from checkpoint, the shape in current model is torch\.Size\(\[5, 64, 1, 1\]\); and 1 more"
    )
    with pytest.raises(CheckpointError, match=message):
        predict_files(cfg, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("script, keys", [
    ("scripts/predict.py", ["checkpoint", "input"]), ("evaluate.py", ["checkpoint"]),
])
def test_a_required_key_left_unset_is_named_without_a_traceback(tmp_path, script, keys):
    result = run_entry_point(script, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "error: " + "; ".join(
        f"{key} is not set: pass {key}=... on the command line" for key in keys)
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_photo_is_segmented_the_way_up_its_exif_orientation_says(tmp_path, checkpoint):
    path, _ = checkpoint
    pixels = np.random.default_rng(4).integers(0, 256, (60, 100, 3), dtype=np.uint8)  # stored 100 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": shown 60 wide, 100 tall
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif)
    assert read_image(tmp_path / "phone.jpg").shape == (60, 100, 3)  # datasets: the stored grid
    assert read_image(tmp_path / "phone.jpg", upright=True).shape == (100, 60, 3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    predict_files(compose_config("predict", [f"checkpoint={path}", f"input={tmp_path / 'phone.jpg'}", *QUIET]), run_dir)
    with Image.open(run_dir / "predictions" / "phone.png") as png:
        assert png.size == (60, 100)
    with Image.open(run_dir / "overlays" / "phone.jpg") as overlay:
        assert overlay.size == (60, 100)


def test_a_photo_over_max_side_is_segmented_at_that_size_and_its_classes_resized_strip_by_strip(
    tmp_path, checkpoint, monkeypatch
):
    path, model = checkpoint
    write_photo(tmp_path / "photos" / "large.png", 70, 90, seed=5)
    write_photo(tmp_path / "photos" / "small.png", 30, 40, seed=6)  # long side = max_side: untouched
    monkeypatch.setattr(predict_module, "STRIP_ELEMENTS", 5 * 90 * 4)  # 4 rows of 5 classes: 18 strips
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose_config("predict", [f"checkpoint={path}", f"input={tmp_path / 'photos'}", "max_side=40", *QUIET])

    summary = predict_files(cfg, run_dir)

    assert summary["max_side"] == 40
    assert summary["working_sizes"] == {"large": [31, 40], "small": [30, 40]}  # 70 x 40/90 = 31.1
    model.eval()
    transform = eval_transform(cfg.dataset.mean, cfg.dataset.std)
    large = read_image(tmp_path / "photos" / "large.png")
    working = transform(image=cv2.resize(large, (40, 31), interpolation=cv2.INTER_AREA))["image"]
    probabilities, _ = predict(model, working[None], [0.75, 1.0], True, eval_inference(cfg))
    # The direct computation, the full-resolution probabilities at once: the same classes.
    expected = F.interpolate(probabilities, size=(70, 90), mode="bilinear", align_corners=False).argmax(1)[0]
    small = transform(image=read_image(tmp_path / "photos" / "small.png"))["image"]
    expected_small = predict(model, small[None], [0.75, 1.0], True, eval_inference(cfg))[0].argmax(1)[0]
    for sample_id, classes in [("large", expected), ("small", expected_small)]:
        with Image.open(run_dir / "predictions" / f"{sample_id}.png") as png:
            np.testing.assert_array_equal(np.array(png), classes.numpy())
        with Image.open(run_dir / "overlays" / f"{sample_id}.jpg") as overlay:
            assert overlay.size == (classes.shape[1], classes.shape[0])
    assert len(np.unique(expected.numpy())) > 1


@pytest.mark.parametrize("height, width, source_height, source_width", [(61, 95, 17, 23), (40, 3, 1, 9), (9, 9, 9, 9)])
def test_strip_wise_resizing_picks_the_classes_of_the_full_resolution_probabilities(
    monkeypatch, height, width, source_height, source_width
):
    probabilities = torch.rand(6, source_height, source_width, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(predict_module, "STRIP_ELEMENTS", 6 * width * 2)  # strips of 2 rows
    expected = F.interpolate(probabilities[None], size=(height, width), mode="bilinear", align_corners=False)

    classes = full_resolution_classes(probabilities, height, width)

    assert classes.dtype == torch.uint8
    np.testing.assert_array_equal(classes.numpy(), expected.argmax(1)[0].numpy())


@pytest.mark.parametrize("protocol", ["eval=ms_flip_slide", "eval=ms_flip"])
def test_the_smallest_images_are_segmented(tmp_path, checkpoint, protocol):
    path, _ = checkpoint
    sizes = {"dot": (1, 1), "row": (1, 5), "column": (5, 1), "strip": (2, 300)}  # strip: 1 x 40 at max_side=40
    for name, (height, width) in sizes.items():
        write_photo(tmp_path / "photos" / f"{name}.png", height, width, seed=7)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose_config("predict", [
        f"checkpoint={path}", f"input={tmp_path / 'photos'}", "max_side=40", protocol, "runtime.num_workers=0",
        "runtime.progress=false",
    ])

    summary = predict_files(cfg, run_dir)

    assert summary["working_sizes"]["strip"] == [1, 40]
    for name, (height, width) in sizes.items():
        with Image.open(run_dir / "predictions" / f"{name}.png") as png:
            assert png.size == (width, height)


def test_a_16_bit_png_is_segmented_as_its_8_bit_equivalent(tmp_path, checkpoint):
    path, _ = checkpoint
    pixels = np.random.default_rng(8).integers(0, 65536, (40, 50), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")  # mode I;16
    Image.fromarray(np.rint(pixels / 257).astype(np.uint8)).save(tmp_path / "flat.png")  # value * 255 / 65535
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose_config("predict", [
        f"checkpoint={path}", f"input=[{tmp_path / 'deep.png'},{tmp_path / 'flat.png'}]", *QUIET,
    ])

    predict_files(cfg, run_dir)

    for output in ("predictions/{}.png", "overlays/{}.jpg"):
        with Image.open(run_dir / output.format("deep")) as deep, Image.open(run_dir / output.format("flat")) as flat:
            np.testing.assert_array_equal(np.array(deep), np.array(flat))


@pytest.mark.parametrize("max_side", ["0", "big"])
def test_a_max_side_that_is_not_a_size_is_refused(tmp_path, checkpoint, max_side):
    path, _ = checkpoint
    write_photo(tmp_path / "a.png", 8, 8, seed=0)
    overrides = [f"checkpoint={path}", f"input={tmp_path / 'a.png'}", *QUIET]
    with pytest.raises(ConfigError, match=rf"^max_side={max_side}: expected an integer >= 1 or null$"):
        compose_config("predict", [*overrides, f"max_side={max_side}"])  # at startup, before any work
