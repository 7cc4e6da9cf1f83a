"""CVAT "Segmentation mask 1.1" exports -> the folder layout: files, colours, subsets,
re-runs, and every refusal, on exports built here."""

import logging

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from emanet.data.class_file import read_class_file
from emanet.data.cvat_mask import prepare_cvat_mask, read_labelmap
from emanet.data.palette import read_label_png
from emanet.errors import DatasetError, DatasetNotFoundError

WIDTH, HEIGHT = 40, 30
LABELS = [("background", (0, 0, 0)), ("car", (250, 50, 83)), ("traffic light", (250, 170, 30))]
LABELMAP = "# label:color_rgb:parts:actions\n" + "".join(f"{n}:{','.join(map(str, c))}::\n" for n, c in LABELS)


def write_image(path, width=WIDTH, height=HEIGHT, orientation=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes())


def colour_mask(seed, width=WIDTH, height=HEIGHT, colours=None):
    """(H, W, 3) uint8: random rectangles of the labels' colours."""
    rng = np.random.default_rng(seed)
    colours = colours or [c for _, c in LABELS]
    pixels = np.zeros((height, width, 3), np.uint8)
    for _ in range(4):
        top, left = rng.integers(0, height), rng.integers(0, width)
        pixels[top: top + 10, left: left + 15] = colours[rng.integers(0, len(colours))]
    return pixels


def write_mask(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def cvat_export(tmp_path, subsets=None, extensions=None):
    """An unzipped export: ``subsets`` maps subset list name -> ids (default: one default.txt)."""
    export = tmp_path / "export"
    export.mkdir(parents=True)
    (export / "labelmap.txt").write_text(LABELMAP)
    subsets = subsets or {"default": ["frame_000", "frame_001", "sub/frame_002"]}
    extensions = extensions or {}
    for number, sample_id in enumerate(i for ids in subsets.values() for i in ids):
        write_image(export / "JPEGImages" / f"{sample_id}{extensions.get(sample_id, '.jpg')}", seed=number)
        write_mask(export / "SegmentationClass" / f"{sample_id}.png", colour_mask(number))
        write_mask(export / "SegmentationObject" / f"{sample_id}.png", colour_mask(number + 50, colours=[(9, 9, 9)]))
    for subset, ids in subsets.items():
        listing = export / "ImageSets" / "Segmentation" / f"{subset}.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{i}\n" for i in ids))
    return export


def test_a_default_subset_goes_to_train_with_the_files_copied(tmp_path):
    export = cvat_export(tmp_path, extensions={"frame_001": ".PNG"})
    out = tmp_path / "out"
    assert prepare_cvat_mask(export, out) == {"train": 3}
    classes = read_class_file(out / "classes.txt")
    assert classes.names == ("background", "car", "traffic light")
    assert classes.colors == ((0, 0, 0), (250, 50, 83), (250, 170, 30))
    assert (out / "classes.txt").read_text().splitlines()[1] == "car 250 50 83"
    images, masks = sorted((out / "images" / "train").iterdir()), sorted((out / "masks" / "train").iterdir())
    assert [p.name for p in images] == ["frame_000.jpg", "frame_001.PNG", "frame_002.jpg"]
    assert [p.name for p in masks] == ["frame_000.png", "frame_001.png", "frame_002.png"]
    for sample_id, image in (("frame_000", "frame_000.jpg"), ("frame_001", "frame_001.PNG"), ("sub/frame_002", None)):
        name = sample_id.split("/")[-1]
        source = export / "JPEGImages" / (image or f"{sample_id}.jpg")
        assert (out / "images" / "train" / (image or f"{name}.jpg")).read_bytes() == source.read_bytes()
        mask = (export / "SegmentationClass" / f"{sample_id}.png").read_bytes()
        assert (out / "masks" / "train" / f"{name}.png").read_bytes() == mask  # RGB, as CVAT wrote it
    assert not (out / "images" / "val").exists()


def test_subsets_go_to_train_and_val(tmp_path, caplog):
    subsets = {"train": ["t1", "t2"], "val": ["v1"], "Validation": ["v2"], "test": ["x1"]}
    export = cvat_export(tmp_path, subsets=subsets)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="emanet.data.cvat_mask"):
        assert prepare_cvat_mask(export, out) == {"train": 3, "val": 2}
    assert sorted(p.stem for p in (out / "images" / "train").iterdir()) == ["t1", "t2", "x1"]
    assert sorted(p.stem for p in (out / "masks" / "val").iterdir()) == ["v1", "v2"]
    assert "CVAT subset 'test' (1 images) goes to the split train" in caplog.text


def test_rerun_writes_nothing_new_and_replaces_a_damaged_copy(tmp_path):
    export = cvat_export(tmp_path)
    out = tmp_path / "out"
    prepare_cvat_mask(export, out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    assert prepare_cvat_mask(export, out) == {"train": 3}
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == before
    damaged = out / "masks" / "train" / "frame_001.png"
    damaged.write_bytes(damaged.read_bytes()[:40])
    prepare_cvat_mask(export, out)
    assert damaged.read_bytes() == (export / "SegmentationClass" / "frame_001.png").read_bytes()
    assert all(p.stat().st_mtime_ns == before[p] for p in files if p != damaged)


def test_a_palette_mask_is_written_as_rgb(tmp_path):
    export = cvat_export(tmp_path)
    pixels = colour_mask(0)
    palette = Image.fromarray(pixels).quantize(colors=3, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(export / "SegmentationClass" / "frame_000.png")
    assert (np.array(palette.convert("RGB")) == pixels).all()
    out = tmp_path / "out"
    prepare_cvat_mask(export, out)
    with Image.open(out / "masks" / "train" / "frame_000.png") as written:
        assert written.mode == "RGB"
        np.testing.assert_array_equal(np.array(written), pixels)
    before = (out / "masks" / "train" / "frame_000.png").stat().st_mtime_ns
    prepare_cvat_mask(export, out)
    assert (out / "masks" / "train" / "frame_000.png").stat().st_mtime_ns == before


def test_the_upright_image_size_is_the_one_masks_must_have(tmp_path):
    export = cvat_export(tmp_path)
    write_image(export / "JPEGImages" / "frame_000.jpg", width=HEIGHT, height=WIDTH, orientation=6)
    assert prepare_cvat_mask(export, tmp_path / "out") == {"train": 3}
    write_image(export / "JPEGImages" / "frame_001.jpg", orientation=5)
    with pytest.raises(DatasetError, match=r"frame_001\.png: mask is 40x30 but its image frame_001\.jpg is 30x40"):
        prepare_cvat_mask(export, tmp_path / "out2")


def refuse(tmp_path, damage, match, error=DatasetError, subsets=None):
    export = cvat_export(tmp_path, subsets=subsets)
    damage(export)
    with pytest.raises(error, match=match) as refused:
        prepare_cvat_mask(export, tmp_path / "out")
    message = str(refused.value)
    assert "\n" not in message
    assert not (tmp_path / "out" / "images").exists() and not (tmp_path / "out" / "classes.txt").exists()
    return message, export


def test_refuses_an_export_without_labelmap(tmp_path):
    message, export = refuse(tmp_path, lambda e: (e / "labelmap.txt").unlink(), "no labelmap.txt", DatasetNotFoundError)
    assert message.startswith(str(export / "labelmap.txt"))


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("car 250,50,83", "labelmap.txt:5: 'car 250,50,83' is not a label line"),
        ("bus:250,50::", "labelmap.txt:5: 'bus:250,50::' is not a label line"),
        ("bus:250,50,300::", "labelmap.txt:5: .* is not a label line"),
        (":1,2,3::", "labelmap.txt:5: .* is not a label line"),
        ("bus:250,50,83::", r"labelmap.txt:5: label 'bus' has the colour 250,50,83 of 'car' \(line 3\)"),
        ("car:1,2,3::", "labelmap.txt: the label name 'car' is given twice"),
    ],
)
def test_refuses_a_bad_labelmap_line(tmp_path, line, match):
    refuse(tmp_path, lambda e: (e / "labelmap.txt").write_text(LABELMAP + line + "\n"), match)


def test_labelmap_names_may_hold_colons_and_lines_may_lack_parts(tmp_path):
    path = tmp_path / "labelmap.txt"
    path.write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nsign: stop:1,2,3:pole:\nsky:4,5,6\n")
    assert read_labelmap(path) == (["background", "sign: stop", "sky"], [(0, 0, 0), (1, 2, 3), (4, 5, 6)])


def test_refuses_a_listed_id_without_image_saying_where_it_looked(tmp_path):
    message, export = refuse(tmp_path, lambda e: (e / "JPEGImages" / "frame_001.jpg").unlink(), "1 listed ids lack")
    assert str(export / "JPEGImages" / "frame_001") in message and "looked for in JPEGImages only" in message


def test_refuses_a_listed_id_without_mask(tmp_path):
    message, export = refuse(tmp_path, lambda e: (e / "SegmentationClass" / "sub" / "frame_002.png").unlink(), "lack")
    assert str(export / "SegmentationClass" / "sub" / "frame_002.png") in message


def test_refuses_a_mask_colour_not_in_the_labelmap_naming_colour_and_count(tmp_path):
    def paint(export):
        pixels = colour_mask(1)
        pixels[:2, :3] = (1, 2, 3)
        write_mask(export / "SegmentationClass" / "frame_001.png", pixels)

    message, export = refuse(tmp_path, paint, "colour 1,2,3 on 6 pixels is not in")
    assert message.startswith(str(export / "SegmentationClass" / "frame_001.png"))


def test_refuses_a_mask_of_another_size(tmp_path):
    def smaller(export):
        write_mask(export / "SegmentationClass" / "frame_000.png", colour_mask(0, width=WIDTH - 2))

    message, export = refuse(tmp_path, smaller, "mask is 38x30 but its image frame_000.jpg is 40x30")
    assert message.startswith(str(export / "SegmentationClass" / "frame_000.png"))


def test_refuses_a_mask_that_does_not_decode(tmp_path):
    message, export = refuse(
        tmp_path, lambda e: (e / "SegmentationClass" / "frame_000.png").write_bytes(b"\x89PNG"), "cannot read the mask"
    )
    assert message.startswith(str(export / "SegmentationClass" / "frame_000.png"))


def test_refuses_ids_that_flatten_to_one_name(tmp_path):
    subsets = {"train": ["a/frame"], "val": ["b/frame"]}
    message, export = refuse(tmp_path, lambda e: None, "id 'b/frame' would be written as frame", subsets=subsets)
    assert message.startswith(str(export / "ImageSets" / "Segmentation" / "val.txt"))


def test_refuses_two_images_of_one_id(tmp_path):
    refuse(tmp_path, lambda e: write_image(e / "JPEGImages" / "frame_000.png"), "2 images for the id frame_000")


def test_refuses_another_export_with_other_labels_into_the_same_folder(tmp_path):
    first = cvat_export(tmp_path / "first")
    out = tmp_path / "out"
    prepare_cvat_mask(first, out)
    second = cvat_export(tmp_path / "second")
    (second / "labelmap.txt").write_text(LABELMAP.replace("250,50,83", "250,50,84"))
    for mask in (second / "SegmentationClass").rglob("*.png"):
        with Image.open(mask) as image:
            pixels = np.array(image)
        pixels[(pixels == (250, 50, 83)).all(axis=2)] = (250, 50, 84)
        write_mask(mask, pixels)
    differ = r"labels and colours differ .* \(class 1 is \('car', \(250, 50, 83\)\) there, \('car', \(250, 50, 84\)\)"
    with pytest.raises(DatasetError, match=differ) as refused:
        prepare_cvat_mask(second, out)
    assert str(second / "labelmap.txt") in str(refused.value) and str(out / "classes.txt") in str(refused.value)


@pytest.mark.slow
def test_worker_processes_write_the_same_folder(tmp_path):
    export = cvat_export(tmp_path, subsets={"train": ["t1", "t2"], "val": ["v1", "v2"]})
    Image.open(export / "SegmentationClass" / "t2.png").quantize(colors=3).save(export / "SegmentationClass" / "t2.png")
    assert prepare_cvat_mask(export, tmp_path / "one") == prepare_cvat_mask(export, tmp_path / "two", workers=2)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert one == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert all((tmp_path / "one" / p).read_bytes() == (tmp_path / "two" / p).read_bytes() for p in one)


def test_the_export_then_the_folder_preparation_give_index_labels_of_the_labelmap(tmp_path, monkeypatch, capsys):
    export = cvat_export(tmp_path, subsets={"default": [f"frame_{i:03d}" for i in range(4)]})
    root = tmp_path / "out"
    for argv in (["cvat_mask", "--export", str(export), "--root", str(root)], ["folder", "--root", str(root)]):
        status, err = run_cli(monkeypatch, capsys, *argv, "--workers", "1")
        assert status == 0, err
    for number in range(4):
        colours = colour_mask(number)
        expected = np.zeros((HEIGHT, WIDTH), np.uint8)
        for index, (_, colour) in enumerate(LABELS):
            expected[(colours == colour).all(axis=2)] = index
        assert np.array_equal(read_label_png(root / "labels" / "train" / f"frame_{number:03d}.png"), expected)
    listed = [*(root / "splits" / "train.txt").read_text().split(), *(root / "splits" / "val.txt").read_text().split()]
    assert sorted(listed) == [f"train/frame_{i:03d}.jpg" for i in range(4)]
