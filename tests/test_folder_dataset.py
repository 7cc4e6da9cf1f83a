"""A dataset of one's own (dataset=folder): classes.txt, the preparation's checks and
outputs, EXIF orientation, and the config that reads the classes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import compose_config, run_cli, run_entry_point, write_photo
from omegaconf import OmegaConf
from PIL import Image, ImageOps

from emanet.data import build_dataset
from emanet.data import folder as folder_module
from emanet.data.class_file import read_class_file, write_class_file
from emanet.data.folder import prepare_folder, split_off_val
from emanet.data.label_check import find_bad_labels
from emanet.data.palette import color_map, colorize, read_label_png, save_label_png
from emanet.data.segmentation import output_name, read_image
from emanet.errors import DatasetError, DatasetNotFoundError

COLORS = [(0, 0, 0), (0, 200, 0), (200, 0, 0)]
CLASSES = "background 0 0 0\nleaf 0 200 0\nbrown spot 200 0 0\n"


def classes_map(height: int, width: int, seed: int) -> np.ndarray:
    """A label map of classes 0-2 with a band of 255 (ignored)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, (height, width)).astype(np.uint8)
    label[:, :2] = 255
    return label


def write_mask(path, label: np.ndarray, form: str) -> None:
    """``label`` as an index mask ("L", "P") or an RGB mask in COLORS (255 in VOC's ignore colour)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if form == "RGB":
        Image.fromarray(np.array([*COLORS, *color_map()[3:]], dtype=np.uint8)[label]).save(path)
    else:
        save_label_png(label, path, mode=form)


def make_folder(root, count: int = 6, forms=("L", "P", "RGB"), split: str = "train", size=(30, 40)):
    """``count`` random photos with masks in ``forms`` in turn; returns {stem: label}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(CLASSES)
    labels = {}
    for index in range(count):
        stem = f"{split}_{index:02d}"
        rng = np.random.default_rng(index)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / split / f"{stem}.png")
        labels[stem] = classes_map(*size, seed=index)
        write_mask(root / "masks" / split / f"{stem}.png", labels[stem], forms[index % len(forms)])
    return labels


def test_class_file_reads_names_with_spaces_and_optional_colours(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("background 0 0 0\ntraffic light 250 170 30\nperson\n\n")
    classes = read_class_file(path)
    assert classes.names == ("background", "traffic light", "person")
    assert classes.colors == ((0, 0, 0), (250, 170, 30), None)
    assert classes.display_colors() == [[0, 0, 0], [250, 170, 30], color_map()[2].tolist()]
    write_class_file(tmp_path / "again.txt", classes.names, classes.colors)
    assert (tmp_path / "again.txt").read_text() == "background 0 0 0\ntraffic light 250 170 30\nperson\n"


@pytest.mark.parametrize(("text", "message"), [
    ("a\n\nb\n", "classes.txt:2: empty line"),
    ("a\na\n", "classes.txt:2: class 'a' is already line 1"),
    ("a 1 2 3\nb 1 2 3\n", "classes.txt:2: colour 1 2 3 is already that of 'a'"),
    ("a 1 2 300\n", "classes.txt:1: colour 1 2 300 is not three values 0-255"),
    ("", "classes.txt: the class list is empty"),
])
def test_a_bad_class_file_is_refused_naming_the_line(tmp_path, text, message):
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_class_file(tmp_path / "classes.txt")


def test_the_preparation_converts_every_mask_form_and_splits_off_val(tmp_path):
    root = tmp_path / "leaves"
    labels = make_folder(root, count=10)
    assert prepare_folder(root, val_fraction=0.2, seed=3) == {"train": 8, "val": 2}
    for stem, label in labels.items():
        written = root / "labels" / "train" / f"{stem}.png"
        assert np.array_equal(read_label_png(written), label), stem
        assert Image.open(written).mode == "P"
    train_ids = (root / "splits" / "train.txt").read_text().split()
    val_ids = (root / "splits" / "val.txt").read_text().split()
    assert sorted(train_ids + val_ids) == [f"train/{stem}.png" for stem in sorted(labels)]
    assert (train_ids, val_ids) == tuple(split_off_val(sorted(f"train/{s}.png" for s in labels), 0.2, 3))
    # The pixels of each class per split, as the table has them.
    expected = {split: [sum(int((labels[i.split("/")[1][:-4]] == k).sum()) for i in ids) for k in range(3)]
                for split, ids in (("train", train_ids), ("val", val_ids))}
    table = (root / "class_pixels.md").read_text()
    assert f"| brown spot | {expected['train'][2]:,} |" in table
    assert f"| {expected['val'][2]:,} |" in table.splitlines()[-1]
    assert (root / "class_pixels.png").stat().st_size > 0 and (root / "class_pixels.pdf").stat().st_size > 0


def test_a_class_without_pixels_in_a_split_is_named(tmp_path, caplog):
    root = tmp_path / "leaves"
    labels = make_folder(root, count=2, forms=("L",))
    make_folder(root, count=1, forms=("L",), split="val")
    save_label_png(np.where(labels["train_00"] == 2, 1, labels["train_00"]), root / "masks" / "train" / "train_00.png")
    save_label_png(np.where(labels["train_01"] == 2, 0, labels["train_01"]), root / "masks" / "train" / "train_01.png")
    caplog.set_level(logging.WARNING)
    prepare_folder(root)
    assert [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING] == [
        "train split: no pixel of brown spot: its IoU cannot be measured and the network cannot learn it"]
    assert "| brown spot | 0 | 0.00 |" in (root / "class_pixels.md").read_text()


def test_the_val_split_is_fixed_by_the_seed():
    ids = [f"train/{index:03d}.jpg" for index in range(50)]
    train, val = split_off_val(ids, 0.1, 0)
    assert len(val) == 5 and sorted(train + val) == ids
    assert split_off_val(list(reversed(ids)), 0.1, 0)[1] == sorted(val, reverse=True)  # the order given does not matter
    assert split_off_val(ids, 0.1, 1)[1] != val
    assert split_off_val(ids[:2], 0.1, 0)[1] != [] and split_off_val(ids[:1], 0.1, 0) == (ids[:1], [])


def test_a_val_folder_is_the_val_split_and_a_rerun_rewrites_only_a_changed_label(tmp_path):
    root = tmp_path / "leaves"
    make_folder(root, count=3)
    val_labels = make_folder(root, count=2, split="val")
    assert prepare_folder(root) == {"train": 3, "val": 2}
    assert (root / "splits" / "val.txt").read_text().split() == [f"val/{stem}.png" for stem in sorted(val_labels)]
    written = sorted((root / "labels").rglob("*.png"))
    stamps = {path: path.stat().st_mtime_ns for path in written}
    damaged = root / "labels" / "val" / "val_01.png"
    save_label_png(np.zeros((30, 40), np.uint8), damaged)
    prepare_folder(root)
    assert np.array_equal(read_label_png(damaged), val_labels["val_01"])
    assert [path for path in written if path.stat().st_mtime_ns != stamps[path]] == [damaged]


def test_every_bad_file_is_named_in_one_line_before_anything_is_written(tmp_path, caplog):
    root = tmp_path / "leaves"
    make_folder(root, count=7, forms=("L",))
    images, masks = root / "images" / "train", root / "masks" / "train"
    (masks / "train_00.png").unlink()  # an image without mask
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(masks / "orphan.png")  # a mask without image
    save_label_png(np.zeros((20, 40), np.uint8), masks / "train_01.png")  # another size
    data = (images / "train_02.png").read_bytes()
    (images / "train_02.png").write_bytes(data[: len(data) // 2])  # truncated
    label = classes_map(30, 40, seed=3)
    label[0, 5] = 7
    save_label_png(label, masks / "train_03.png")  # a value that is no class
    colours = np.zeros((30, 40, 3), np.uint8)
    colours[:3, :4] = (1, 2, 3)
    Image.fromarray(colours).save(masks / "train_04.png")  # a colour not in classes.txt
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(images / "train_05.jpg")  # the stem of train_05.png
    caplog.set_level(logging.ERROR)
    with pytest.raises(DatasetError, match=r"7 problems \(each named above; 4 of 6 image/mask pairs are bad\)"):
        prepare_folder(root)
    lines = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert sorted(lines) == sorted([
        f"{images / 'train_05.png'}: has the name of train_05.jpg; rename one (their masks would clash)",
        f"{images / 'train_00.png'}: image without mask (expected {masks / 'train_00.png'})",
        f"{masks / 'orphan.png'}: mask without image (no orphan.<jpg,jpeg,png,bmp,tif,tiff,webp> in {images})",
        f"{masks / 'train_01.png'}: mask is 40x20 but its image train_01.png is 40x30",
        *[line for line in lines if line.startswith(f"{images / 'train_02.png'}: cannot read the image (")],
        f"{masks / 'train_03.png'}: values 7 (1 pixels) are neither a class 0-2 nor 255 (ignored)",
        f"{masks / 'train_04.png'}: colour 1 2 3 (12 pixels) is not in classes.txt",
    ])
    assert not (root / "labels").exists() and not (root / "splits").exists()


def test_the_command_line_ends_a_bad_folder_with_status_2(tmp_path, monkeypatch, capsys):
    root = tmp_path / "leaves"
    make_folder(root, count=2)
    (root / "masks" / "train" / "train_00.png").unlink()
    status, err = run_cli(monkeypatch, capsys, "folder", "--root", str(root), "--workers", "1")
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        f"error: {root}: 1 problem (each named above; 0 of 1 image/mask pairs are bad); fix it and run the same "
        "command again")
    (root / "images" / "train" / "train_00.png").unlink()
    assert run_cli(monkeypatch, capsys, "folder", "--root", str(root), "--workers", "1")[0] == 0


def rotated_photo(path, stored: np.ndarray, orientation: int) -> None:
    """A JPEG of the ``stored`` pixels whose EXIF says to turn it (6: a quarter clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif, quality=95)


def test_a_phone_photo_is_used_upright_in_training_evaluation_and_prediction(tmp_path):
    root = tmp_path / "photos"
    make_folder(root, count=2)
    stored = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 40 wide, stored sideways
    photo = root / "images" / "train" / "phone.jpg"
    rotated_photo(photo, stored, orientation=6)
    upright = np.array(ImageOps.exif_transpose(Image.open(photo)).convert("RGB"))
    assert upright.shape == (40, 30, 3)
    write_mask(root / "masks" / "train" / "phone.png", classes_map(30, 40, seed=9), "L")  # drawn on the stored grid
    with pytest.raises(DatasetError):
        prepare_folder(root)
    write_mask(root / "masks" / "train" / "phone.png", classes_map(40, 30, seed=9), "L")  # drawn upright
    prepare_folder(root, val_fraction=0.4)
    cfg = compose_config([f"dataset.root={root}", "experiment=folder_emanet512", "model.backbone.pretrained=null"])
    dataset = build_dataset(cfg.dataset, "train" if "train/phone.jpg" in (root / "splits/train.txt").read_text()
                            else "val")
    image, label = dataset.load(dataset.ids.index("train/phone.jpg"))
    assert np.array_equal(image, upright) and np.array_equal(image, read_image(photo, upright=True))
    assert label.shape == (40, 30)
    assert find_bad_labels(dataset, cache_dir=None) == {}
    # The label check, which reads only the header, turns the size as training does.
    write_mask(root / "labels" / "train" / "phone.png", classes_map(30, 40, seed=9), "L")
    assert find_bad_labels(dataset, cache_dir=None) == {
        "train/phone.jpg": f"{root / 'labels' / 'train' / 'phone.png'}: label is 40x30 but its image phone.jpg is "
                           "30x40 once turned upright (EXIF orientation 6)"}


def test_the_folder_config_takes_classes_count_and_colours_from_classes_txt(tmp_path):
    (tmp_path / "classes.txt").write_text(CLASSES)
    cfg = compose_config(["experiment=folder_emanet512", f"dataset.root={tmp_path}"])
    assert cfg.dataset.num_classes == 3
    assert list(cfg.dataset.class_names) == ["background", "leaf", "brown spot"]
    assert [list(color) for color in cfg.dataset.class_colors] == [list(color) for color in COLORS]
    assert (cfg.dataset.layout.images, cfg.dataset.layout.labels) == ("images/{id}", "labels/{stem}.png")
    assert cfg.dataset.exif_orientation is True
    (tmp_path / "classes.txt").write_text("a\nb\n")
    cfg = compose_config(["experiment=folder_emanet512", f"dataset.root={tmp_path}"])
    assert (cfg.dataset.num_classes, cfg.dataset.class_colors) == (2, None)  # VOC's colours
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'empty' / 'classes.txt'}: no class list"):
        compose_config(["experiment=folder_emanet512", f"dataset.root={tmp_path / 'empty'}"])
    with pytest.raises(DatasetNotFoundError, match=f"dataset.root={tmp_path / 'nothing'}: no such folder"):
        compose_config(["experiment=folder_emanet512", f"dataset.root={tmp_path / 'nothing'}"])


def test_predictions_are_drawn_in_the_classes_colours(tmp_path):
    classes = np.array([[0, 1], [2, 255]], np.uint8)
    save_label_png(classes, tmp_path / "p.png", class_colors=COLORS)
    image = Image.open(tmp_path / "p.png")
    assert image.getpalette()[:9] == [value for color in COLORS for value in color]
    assert np.array_equal(np.array(image), classes)
    assert colorize(classes, COLORS)[1, 0].tolist() == [200, 0, 0]
    assert colorize(classes)[1, 0].tolist() == color_map()[2].tolist()
    assert output_name("train/IMG_0042.JPG") == "train/IMG_0042" and output_name("2008_000123") == "2008_000123"


# A narrow network on 32x32 crops of the folder's 30x40 images, two steps: what the demo's
# TINY settings are to the demo.
FOLDER_TINY = [
    "experiment=folder_emanet512", "model.backbone.depth=18", "model.backbone.width=16",
    "model.backbone.multi_grid=[1,2]", "model.backbone.pretrained=null", "model.ema.channels=64",
    "model.ema.num_bases=16", "model.mid_channels=64", "dataset.crop_size=32", "eval.crop_size=32",
    "eval.stride=24", "schedule.iterations=2", "schedule.batch_size=2", "schedule.checkpoint_every=1",
    "runtime.num_workers=0", "runtime.progress=false", "eval.scales=[0.75,1.0]",
]


@pytest.mark.slow
def test_a_folder_of_photos_and_masks_trains_evaluates_and_predicts_in_its_colours(tmp_path):
    root = tmp_path / "leaves"
    make_folder(root, count=8)
    assert run_entry_point("scripts/prepare_dataset.py", "folder", "--root", str(root)).returncode == 0
    run_dir = tmp_path / "run"
    trained = run_entry_point("train.py", *FOLDER_TINY, f"dataset.root={root}", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["per_class_IoU"]) == ["background", "leaf", "brown spot"]
    saved = OmegaConf.load(run_dir / "config.yaml").dataset
    assert (saved.num_classes, list(saved.class_names)) == (3, ["background", "leaf", "brown spot"])
    assert [list(color) for color in saved.class_colors] == [list(color) for color in COLORS]
    for figure in ("confusion_matrix.png", "per_class_iou.png"):
        assert (run_dir / figure).stat().st_size > 0
    # The class list is the run's own: evaluation needs no dataset setting.
    evaluation = run_entry_point("evaluate.py", f"checkpoint={run_dir}", "eval=ss", "eval.save_predictions=true",
                                 "runtime.progress=false", f"hydra.run.dir={tmp_path / 'eval'}")
    assert evaluation.returncode == 0, evaluation.stderr
    val_ids = (root / "splits" / "val.txt").read_text().split()
    written = tmp_path / "eval" / "predictions" / f"{output_name(val_ids[0])}.png"
    assert Image.open(written).getpalette()[:9] == [value for color in COLORS for value in color]
    predicted = run_entry_point("scripts/predict.py", f"checkpoint={run_dir}", f"input={root / 'images' / 'train'}",
                                "runtime.progress=false", f"hydra.run.dir={tmp_path / 'predict'}")
    assert predicted.returncode == 0, predicted.stderr
    predictions = sorted((tmp_path / "predict" / "predictions").glob("*.png"))
    assert len(predictions) == 8
    prediction = Image.open(predictions[0])
    assert prediction.getpalette()[:9] == [value for color in COLORS for value in color]
    overlay = np.asarray(Image.open(tmp_path / "predict" / "overlays" / f"{predictions[0].stem}.jpg"), np.float64)
    photo = np.asarray(Image.open(root / "images" / "train" / f"{predictions[0].stem}.png"), np.float64)
    classes = np.array(prediction)

    def error(colours: np.ndarray) -> float:
        return np.abs(overlay - (0.5 * photo + 0.5 * colours[classes])).mean()

    # JPEG blurs the photos' noise (about 27 levels); VOC's colours would add tens more.
    assert error(np.array(COLORS, np.float64)) + 10 < error(color_map()[:3].astype(np.float64))


@pytest.mark.slow
def test_fine_tuning_the_demos_checkpoint_on_a_three_class_folder(tmp_path, full_run):
    root = tmp_path / "leaves"
    make_folder(root, count=6)
    prepare_folder(root)
    run_dir = tmp_path / "fine_tuned"
    demo_network = ["model.backbone.stem=deep", "model.bn_momentum=0.1"]  # the demo's, which folder_emanet512 changes
    tuned = run_entry_point("train.py", *FOLDER_TINY, *demo_network, f"dataset.root={root}",
                            f"model.init_from={full_run}", f"hydra.run.dir={run_dir}")
    assert tuned.returncode == 0, tuned.stderr
    line = next(line for line in (tuned.stdout + tuned.stderr).splitlines() if "init_from" in line and "loaded" in line)
    demo = torch.load(full_run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert line.endswith(f"init_from {full_run}: {len(demo) - 2} of {len(demo)} tensors loaded; new: "
                         "head.classifier.weight, head.classifier.bias (5 -> 3 classes)")
    first = torch.load(run_dir / "checkpoints" / "iter_0000001.pt", weights_only=True)
    assert first["iteration"] == 1 and first["model"]["head.classifier.weight"].shape[0] == 3
    # A network of another architecture is refused in one line naming the file, before training.
    refused = run_entry_point("train.py", *FOLDER_TINY, f"dataset.root={root}", f"model.init_from={full_run}",
                              f"hydra.run.dir={tmp_path / 'refused'}")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(f"error: {full_run / 'checkpoints' / 'last.pt'}")
    assert "model.backbone.stem=deep" in refused.stderr


@pytest.mark.slow
def test_a_coco_json_export_becomes_a_trained_model_with_the_readme_commands(tmp_path):
    export = tmp_path / "export"
    (export / "images").mkdir(parents=True)
    images, annotations = [], []
    for index in range(6):
        write_photo(export / "images" / f"img{index}.jpg", 30, 40, seed=index)
        images.append({"id": index + 1, "file_name": f"img{index}.jpg", "width": 40, "height": 30})
        box = [4 + index, 3, 20, 15]
        polygon = [box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3], box[0], box[1] + box[3]]
        annotations.append({"id": 2 * index + 1, "image_id": index + 1, "category_id": 7, "segmentation": [polygon],
                            "area": box[2] * box[3], "bbox": box, "iscrowd": 0})
        annotations.append({"id": 2 * index + 2, "image_id": index + 1, "category_id": 3,
                            "segmentation": [[10, 12, 18, 12, 14, 25]], "area": 52.0, "bbox": [10, 12, 8, 13],
                            "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "leaf"}, {"id": 3, "name": "spot"}]}
    (export / "train.json").write_text(json.dumps(coco))
    root = tmp_path / "leaves"
    for command in (["coco_json", "--annotations", str(export / "train.json"), "--images", str(export / "images"),
                     "--root", str(root)], ["folder", "--root", str(root)]):
        done = run_entry_point("scripts/prepare_dataset.py", *command)
        assert done.returncode == 0, done.stderr
    assert (root / "classes.txt").read_text() == "background\nleaf\nspot\n"
    label = read_label_png(root / "labels" / "train" / "img0.png")
    assert (label[3:18, 4:24] > 0).all() and label[0, 0] == 0 and label[20, 14] == 2  # the spot lies on the leaf
    run_dir = tmp_path / "run"
    trained = run_entry_point("train.py", *FOLDER_TINY, f"dataset.root={root}", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr
    assert list(json.loads((run_dir / "metrics.json").read_text())["per_class_IoU"]) == ["background", "leaf", "spot"]


def test_a_colour_mask_saved_as_jpeg_gets_five_colours_named_and_the_rest_counted(tmp_path, caplog):
    root = tmp_path / "leaves"
    make_folder(root, count=1, forms=("RGB",))
    mask = root / "masks" / "train" / "train_00.png"
    colours = np.asarray(Image.open(mask)).copy()
    colours[0, :12] = [[value, 1, 1] for value in range(12)]  # 12 colours no class has, one pixel each
    Image.fromarray(colours).save(mask)
    caplog.set_level(logging.ERROR)
    with pytest.raises(DatasetError, match="6 problems"):
        prepare_folder(root)
    lines = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert lines[:5] == [f"{mask}: colour {value} 1 1 (1 pixels) is not in classes.txt" for value in range(5)]
    assert lines[5] == (f"{mask}: and 7 more colours (7 pixels) not in classes.txt; a mask saved as JPEG or drawn "
                        "with antialiasing has such colours")


@pytest.mark.slow
def test_worker_processes_give_the_same_outputs_and_lines(tmp_path, caplog):
    outputs = {}
    for workers in (1, 2):
        root = tmp_path / f"workers{workers}"
        make_folder(root, count=8)
        prepare_folder(root, workers=workers)
        outputs[workers] = [(root / "class_pixels.md").read_text(), (root / "splits" / "val.txt").read_text()]
        for index in (1, 4):  # two bad pairs: their lines come in name order
            save_label_png(np.full((30, 40), 9, np.uint8), root / "masks" / "train" / f"train_0{index}.png")
        caplog.clear()
        with pytest.raises(DatasetError):
            prepare_folder(root, workers=workers)
        outputs[workers].append([record.getMessage().replace(str(root), "ROOT") for record in caplog.records
                                 if record.levelno == logging.ERROR])
    assert outputs[1] == outputs[2]
    assert len(outputs[2][2]) == 2 and "train_01" in outputs[2][2][0]


def test_masks_of_a_val_folder_without_images_are_named_and_an_empty_train_folder_refused(tmp_path, caplog):
    root = tmp_path / "leaves"
    make_folder(root, count=3)
    write_mask(root / "masks" / "val" / "lost.png", classes_map(30, 40, seed=0), "L")
    caplog.set_level(logging.ERROR)
    with pytest.raises(DatasetError, match="1 problem "):
        prepare_folder(root)
    assert caplog.records[-1].getMessage().startswith(f"{root / 'masks' / 'val' / 'lost.png'}: mask without image")
    for image in (root / "images" / "train").iterdir():
        image.unlink()
    with pytest.raises(DatasetNotFoundError, match=f"{root / 'images' / 'train'}: no image"):
        prepare_folder(root)


def test_results_are_matched_to_their_pairs_in_whatever_order_the_workers_return_them(tmp_path, monkeypatch):
    # run_jobs' worker processes return results in no particular order: reversed here.
    outputs = []
    for order in (list, lambda jobs: list(reversed(jobs))):
        monkeypatch.setattr(folder_module, "run_jobs", lambda function, jobs, *args, order=order, **kwargs: [
            function(job) for job in order(jobs)])
        root = tmp_path / f"run{len(outputs)}"
        make_folder(root, count=8)
        prepare_folder(root)
        outputs.append((root / "class_pixels.md").read_text())
    assert outputs[0] == outputs[1]
