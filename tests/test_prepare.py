"""Dataset preparation on miniature copies of the original downloads, in their real formats."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from helpers import folder_is_locked, run_cli, write_label_png
from PIL import Image
from tests_paths import REPO

from emanet.cli import compose_config
from emanet.data import CLASS_NAMES, build_dataset, coco_stuff, prepare, voc_aug
from emanet.data.classes import COCO_STUFF_CLASSES, CONTEXT59_CLASSES, CONTEXT60_CLASSES
from emanet.data.coco_stuff import coco_stuff10k_label, prepare_coco_stuff10k, prepare_coco_stuff164k
from emanet.data.palette import read_label_png, save_label_png
from emanet.data.pascal_context import check_context_label_names, decode_rle, prepare_pascal_context
from emanet.data.segmentation import SegmentationDataset
from emanet.data.voc_aug import prepare_voc_aug
from emanet.errors import DatasetError, DatasetNotFoundError

SIZE = (6, 8)


def png_mode(path):
    with Image.open(path) as png:
        return png.mode


def write_jpeg(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_list(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def write_sbd_mat(path, segmentation):
    # SBD's files hold a MATLAB struct GTcls with fields Segmentation, Boundaries, CategoriesPresent.
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTcls": {
        "Segmentation": segmentation, "Boundaries": np.zeros((20, 1), dtype=object),
        "CategoriesPresent": np.unique(segmentation[segmentation > 0]).astype(np.uint8),
    }})


@pytest.fixture
def voc_and_sbd(tmp_path):
    """VOC: train a, b; val c. SBD: train b, d, c; val e (c is VOC val: kept out of trainaug)."""
    voc, sbd = tmp_path / "VOCdevkit" / "VOC2012", tmp_path / "benchmark_RELEASE"
    rng = np.random.default_rng(1)
    voc_labels, sbd_labels = {}, {}
    for seed, i in enumerate(["2007_a", "2007_b", "2007_c"]):
        write_jpeg(voc / "JPEGImages" / f"{i}.jpg", seed)
        label = rng.integers(0, 21, SIZE, dtype=np.uint8)
        label[0] = 255
        (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        save_label_png(label, voc / "SegmentationClass" / f"{i}.png")
        voc_labels[i] = label
    write_list(voc / "ImageSets" / "Segmentation" / "train.txt", ["2007_a", "2007_b"])
    write_list(voc / "ImageSets" / "Segmentation" / "val.txt", ["2007_c"])
    for seed, i in enumerate(["2007_b", "2008_d", "2007_c", "2008_e"]):
        write_jpeg(sbd / "dataset" / "img" / f"{i}.jpg", 10 + seed)
        sbd_labels[i] = rng.integers(0, 21, SIZE, dtype=np.uint8)
        write_sbd_mat(sbd / "dataset" / "cls" / f"{i}.mat", sbd_labels[i])
    write_list(sbd / "dataset" / "train.txt", ["2007_b", "2008_d", "2007_c"])
    write_list(sbd / "dataset" / "val.txt", ["2008_e"])
    return voc, sbd, voc_labels, sbd_labels


def test_voc_aug_labels_lists_and_counts(voc_and_sbd, caplog):
    voc, sbd, voc_labels, sbd_labels = voc_and_sbd
    counts = prepare_voc_aug(voc, sbd)
    assert counts == {"train": 2, "val": 1, "trainaug": 4}
    assert "trainaug: 4 images, but the published split has 10582" in caplog.text
    trainaug = (voc / "ImageSets" / "Segmentation" / "trainaug.txt").read_text().split()
    assert trainaug == ["2007_a", "2007_b", "2008_d", "2008_e"]
    aug = voc / "SegmentationClassAug"
    # VOC's own labels win where VOC has them (with their 255 boundaries); SBD's fill in.
    assert np.array_equal(read_label_png(aug / "2007_b.png"), voc_labels["2007_b"])
    assert np.array_equal(read_label_png(aug / "2007_c.png"), voc_labels["2007_c"])
    assert np.array_equal(read_label_png(aug / "2008_d.png"), sbd_labels["2008_d"])
    assert png_mode(aug / "2008_e.png") == "P"  # as VOC's own SegmentationClass
    assert (voc / "JPEGImages" / "2008_e.jpg").read_bytes() == (sbd / "dataset" / "img" / "2008_e.jpg").read_bytes()
    dataset = SegmentationDataset(voc, "trainaug", CONTEXT60_CLASSES[:21], {"labels": "SegmentationClassAug/{id}.png"})
    assert len(dataset) == 4 and np.array_equal(dataset.load(2)[1], sbd_labels["2008_d"])


def test_voc_aug_rerun_redoes_interrupted_files(voc_and_sbd):
    voc, sbd, _, sbd_labels = voc_and_sbd
    prepare_voc_aug(voc, sbd)
    aug = voc / "SegmentationClassAug"
    (aug / "2008_e.png").unlink()
    (aug / ".2008_e.png.tmp").write_bytes(b"half")  # what an interrupted write leaves
    prepare_voc_aug(voc, sbd)
    assert np.array_equal(read_label_png(aug / "2008_e.png"), sbd_labels["2008_e"])
    assert sorted(p.name for p in aug.iterdir() if not p.name.startswith(".")) == [
        "2007_a.png", "2007_b.png", "2007_c.png", "2008_d.png", "2008_e.png"
    ]


def test_voc_aug_missing_sbd_names_the_path(voc_and_sbd, tmp_path):
    voc, _, _, _ = voc_and_sbd
    with pytest.raises(DatasetNotFoundError, match=r"SBD labels .* not found at .*nowhere.*data/README.md"):
        prepare_voc_aug(voc, tmp_path / "nowhere")


def test_pascal_context_maps_459_ids_to_60_and_59_classes(tmp_path):
    voc2010 = tmp_path / "VOC2010"
    ids = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    # id -> expected 60-class label: 0 unlabelled and 1 accordion (not among the 59) are
    # background; 2 aeroplane is class 1, 284 person 37, 458 wood 59.
    source = np.array([[0, 1, 2, 284, 458, 2, 0, 1]] * 6, dtype=np.uint16)
    expected = np.array([[0, 0, 1, 37, 59, 1, 0, 0]] * 6, dtype=np.uint8)
    for split_ids in ids.values():
        for seed, i in enumerate(split_ids):
            write_jpeg(voc2010 / "JPEGImages" / f"{i}.jpg", seed)
            (voc2010 / "trainval").mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(voc2010 / "trainval" / f"{i}.mat", {"LabelMap": source})
    write_jpeg(voc2010 / "JPEGImages" / "2008_000009.jpg")  # in Main/train.txt, not annotated
    write_list(voc2010 / "ImageSets" / "Main" / "train.txt", [*ids["train"], "2008_000009"])
    write_list(voc2010 / "ImageSets" / "Main" / "val.txt", ids["val"])
    (voc2010 / "labels.txt").write_text("1: accordion\n2: aeroplane\n284: person\n458: wood\n")

    assert prepare_pascal_context(voc2010, voc2010) == {"train": 2, "val": 1}
    label = read_label_png(voc2010 / "SegmentationClassContext" / "2008_000007.png")
    assert np.array_equal(label, expected)
    assert png_mode(voc2010 / "SegmentationClassContext" / "2008_000007.png") == "L"  # as mmsegmentation's
    assert CONTEXT60_CLASSES[37] == "person" and CONTEXT60_CLASSES[59] == "wood"

    layout = {"labels": "SegmentationClassContext/{id}.png", "split": "ImageSets/SegmentationContext/{split}.txt"}
    with60 = SegmentationDataset(voc2010, "train", CONTEXT60_CLASSES, layout)
    with59 = SegmentationDataset(voc2010, "train", CONTEXT59_CLASSES, layout, reduce_zero_label=True)
    assert with60.ids == ids["train"]
    assert np.array_equal(with60.load(0)[1], expected)
    assert np.array_equal(with59.load(0)[1], np.where(expected == 0, 255, expected - 1))
    assert CONTEXT59_CLASSES[36] == "person"


def test_context_label_names_are_checked(tmp_path, caplog):
    labels = tmp_path / "labels.txt"
    labels.write_text("2: aeroplane\n9: bag\n427: tvmonitor\n")
    assert check_context_label_names(labels) == []
    labels.write_text("2: aeroplane\n9: bagpipe\n")
    assert check_context_label_names(labels) == [9]
    assert "the names of ids [9] differ" in caplog.text


def test_coco_stuff10k_maps_182_ids_to_171_classes(tmp_path):
    root = tmp_path / "cocostuff-10k-v1.1"
    # 1-based ids: 0 unlabelled -> 255; 1 person -> 0; 12 (never annotated) -> 255;
    # 13 stop sign -> 11; 92 banner -> 80; 182 wood -> 170.
    source = np.array([[0, 1, 12, 13, 92, 182, 1, 0]] * 6, dtype=np.uint16)
    expected = np.array([[255, 0, 255, 11, 80, 170, 0, 255]] * 6, dtype=np.uint8)
    ids = {"train": ["COCO_train2014_000000000077"], "test": ["COCO_train2014_000000000078"]}
    for split, split_ids in ids.items():
        write_list(root / "imageLists" / f"{split}.txt", split_ids)
        for i in split_ids:
            write_jpeg(root / "images" / f"{i}.jpg")
            (root / "annotations").mkdir(exist_ok=True)
            scipy.io.savemat(root / "annotations" / f"{i}.mat", {"S": source, "names": np.array(["x"], dtype=object)})
    assert prepare_coco_stuff10k(root) == {"train": 1, "test": 1}
    assert np.array_equal(read_label_png(root / "labels171" / f"{ids['test'][0]}.png"), expected)
    assert png_mode(root / "labels171" / f"{ids['test'][0]}.png") == "L"  # as mmsegmentation's
    assert (COCO_STUFF_CLASSES[0], COCO_STUFF_CLASSES[11], COCO_STUFF_CLASSES[80], COCO_STUFF_CLASSES[170]) == (
        "person", "stop sign", "banner", "wood"
    )
    dataset = SegmentationDataset(
        root, "test", COCO_STUFF_CLASSES,
        {"images": "images/{id}.jpg", "labels": "labels171/{id}.png", "split": "imageLists/{split}.txt"},
    )
    assert np.array_equal(dataset.load(0)[1], expected)

    bad = root / "annotations" / f"{ids['train'][0]}.mat"
    source[0, :2] = 183, 200
    scipy.io.savemat(bad, {"S": source})
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(bad))}: S holds ids \[183, 200\] outside 0-182: "
                       "not a COCO-Stuff 10k annotation$"):
        coco_stuff10k_label(bad, np.arange(182))


@pytest.mark.slow
def test_coco_stuff164k_maps_pngs_and_writes_split_lists_in_worker_processes(tmp_path):
    root = tmp_path / "coco_stuff164k"
    source = np.array([[0, 11, 12, 91, 181, 255, 0, 0]] * 6, dtype=np.uint8)
    expected = np.array([[0, 255, 11, 80, 170, 255, 0, 0]] * 6, dtype=np.uint8)
    for split, names in {"train2017": ["000000000009", "000000000025"], "val2017": ["000000000139"]}.items():
        for name in names:
            write_jpeg(root / "images" / split / f"{name}.jpg")
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(source, mode="L").save(root / "annotations" / split / f"{name}.png")
    assert prepare_coco_stuff164k(root, workers=2) == {"train2017": 2, "val2017": 1}
    assert (root / "splits" / "train2017.txt").read_text() == "train2017/000000000009\ntrain2017/000000000025\n"
    assert np.array_equal(read_label_png(root / "labels171" / "val2017" / "000000000139.png"), expected)
    assert png_mode(root / "labels171" / "val2017" / "000000000139.png") == "L"  # as mmsegmentation's


@pytest.mark.parametrize(
    ("dataset", "num_classes", "expected_root"),
    [
        ("voc_aug", 21, "VOCdevkit/VOC2012"),
        ("pascal_context", 60, "VOCdevkit/VOC2010"),
        ("pascal_context59", 59, "VOCdevkit/VOC2010"),
        ("coco_stuff10k", 171, "cocostuff-10k-v1.1"),
        ("coco_stuff164k", 171, "coco_stuff164k"),
    ],
)
def test_every_dataset_config_composes_and_names_its_missing_root(dataset, num_classes, expected_root, tmp_path):
    cfg = compose_config("train", [f"dataset={dataset}", f"data_root={tmp_path}"])
    assert cfg.dataset.num_classes == num_classes == len(CLASS_NAMES[dataset])
    assert cfg.dataset.reduce_zero_label == (dataset == "pascal_context59")
    missing = f"dataset not found at {tmp_path / expected_root}: see data/README.md"
    with pytest.raises(DatasetNotFoundError, match=missing):
        build_dataset(cfg.dataset, cfg.dataset.train_split)


def test_run_length_masks_decode_like_pycocotools():
    # Strings produced by pycocotools.mask.encode for the masks built here.
    small = np.zeros((5, 7), dtype=bool)
    small[1:4, 2:5] = True
    small[0, 6] = small[4, 0] = True
    assert np.array_equal(decode_rle({"size": [5, 7], "counts": "4162L0004NN"}), small)
    assert np.array_equal(decode_rle({"size": [5, 7], "counts": b"4162L0004NN"}), small)
    larger = np.zeros((60, 80), dtype=bool)
    larger[5:50, 10:70] = True
    larger[20:30, 30:40] = False
    counts = (
        "mb0]1?00000000000000000000000000000000000000ROK55KK55KK55KK55KK55KK55KK55KK55KK55KK55i0"
        "0000000000000000000000000000000000000000000000000000000000cb0"
    )
    assert np.array_equal(decode_rle({"size": [60, 80], "counts": counts}), larger)
    # Uncompressed form: run lengths, column-major, starting with zeros.
    assert np.array_equal(decode_rle({"size": [2, 2], "counts": [1, 2, 1]}), np.array([[False, True], [True, False]]))


def test_pascal_context_from_trainval_merged_json(tmp_path):
    voc2010 = tmp_path / "VOC2010"
    write_jpeg(voc2010 / "JPEGImages" / "2008_000002.jpg")
    write_jpeg(voc2010 / "JPEGImages" / "2008_000007.jpg")
    # 2 aeroplane everywhere, 458 wood on the small mask above, 1 accordion on one corner.
    small = {"size": [5, 7], "counts": "4162L0004NN"}
    images = [
        {"image_id": 2008000002, "file_name": "2008_000002.jpg", "height": 5, "width": 7, "phase": "train"},
        {"image_id": 2008000007, "file_name": "2008_000007.jpg", "height": 5, "width": 7, "phase": "val"},
    ]
    annotations = [
        {"image_id": 2008000007, "category_id": 2, "segmentation": {"size": [5, 7], "counts": [0, 35]}},
        {"image_id": 2008000007, "category_id": 458, "segmentation": small},
        {"image_id": 2008000007, "category_id": 1, "segmentation": {"size": [5, 7], "counts": [4, 1]}},
        {"image_id": 2008000002, "category_id": 284, "segmentation": small},
    ]
    (voc2010 / "trainval_merged.json").write_text(json.dumps({"images": images, "annos_segmentation": annotations}))
    assert prepare_pascal_context(voc2010, voc2010) == {"train": 1, "val": 1}
    mask = decode_rle(small)
    expected = np.where(mask, 59, 1).astype(np.uint8)
    expected[4, 0] = 0  # accordion: not among the 59 classes, so background
    labels = voc2010 / "SegmentationClassContext"
    assert np.array_equal(read_label_png(labels / "2008_000007.png"), expected)
    assert np.array_equal(read_label_png(labels / "2008_000002.png"), np.where(mask, 37, 0))
    assert (voc2010 / "ImageSets" / "SegmentationContext" / "val.txt").read_text() == "2008_000007\n"


def test_voc_aug_undecodable_or_missing_label_png_is_one_error_naming_the_file(voc_and_sbd, monkeypatch, capsys):
    voc, sbd, _, _ = voc_and_sbd
    bad = voc / "SegmentationClass" / "2007_b.png"
    bad.write_bytes(b"\x89PNG garbage, not an image")
    status, err = run_cli(monkeypatch, capsys, "--workers", "1", "voc_aug", "--voc", str(voc), "--sbd", str(sbd))
    assert status == 2
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert error_lines == [
        f"error: {bad}: cannot read the label PNG (cannot identify image file '{bad}'); "
        "unpack it again from VOCtrainval_11-May-2012.tar and re-run"
    ]
    assert not (voc / "SegmentationClassAug" / "2007_b.png").exists()
    bad.unlink()
    missing = rf"^{re.escape(str(bad))}: cannot read the label PNG \(\[Errno 2\] No such file"
    with pytest.raises(DatasetError, match=missing):
        prepare_voc_aug(voc, sbd)


@pytest.mark.slow
def test_coco_stuff164k_undecodable_map_names_the_file_also_from_worker_processes(tmp_path):
    root = tmp_path / "coco_stuff164k"
    for split in ("train2017", "val2017"):
        write_jpeg(root / "images" / split / "000000000009.jpg")
        (root / "annotations" / split).mkdir(parents=True)
        Image.fromarray(np.zeros(SIZE, dtype=np.uint8)).save(root / "annotations" / split / "000000000009.png")
    write_jpeg(root / "images" / "train2017" / "000000000025.jpg")
    bad = root / "annotations" / "train2017" / "000000000025.png"
    bad.write_bytes(b"garbage")
    for workers in (1, 2):
        with pytest.raises(DatasetError) as raised:
            prepare_coco_stuff164k(root, workers=workers)
        assert str(raised.value) == (
            f"{bad}: cannot read the label PNG (cannot identify image file '{bad}'); "
            "unpack it again from stuffthingmaps_trainval2017.zip and re-run"
        )


def test_pascal_context_ids_above_459_are_rejected(tmp_path):
    voc2010 = tmp_path / "VOC2010"
    write_jpeg(voc2010 / "JPEGImages" / "2008_000002.jpg")
    write_list(voc2010 / "ImageSets" / "Main" / "train.txt", ["2008_000002"])
    write_list(voc2010 / "ImageSets" / "Main" / "val.txt", [])
    (voc2010 / "trainval").mkdir()
    mat = voc2010 / "trainval" / "2008_000002.mat"
    source = np.full(SIZE, 459, dtype=np.uint16)  # 459 is the last class: kept (as background)
    scipy.io.savemat(mat, {"LabelMap": source})
    assert prepare_pascal_context(voc2010, voc2010) == {"train": 1, "val": 0}
    assert np.array_equal(read_label_png(voc2010 / "SegmentationClassContext" / "2008_000002.png"), np.zeros(SIZE))
    (voc2010 / "SegmentationClassContext" / "2008_000002.png").unlink()
    source[0, :2] = 460, 1000
    scipy.io.savemat(mat, {"LabelMap": source})
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(mat))}: LabelMap holds ids \[460, 1000\] outside 0-459"):
        prepare_pascal_context(voc2010, voc2010)

    json_root = tmp_path / "json"
    image = {"image_id": 1, "file_name": "2008_000002.jpg", "height": 5, "width": 7, "phase": "train"}
    segment = {"image_id": 1, "category_id": 460, "segmentation": {"size": [5, 7], "counts": [0, 35]}}
    json_root.mkdir()
    (json_root / "trainval_merged.json").write_text(json.dumps({"images": [image], "annos_segmentation": [segment]}))
    with pytest.raises(DatasetError, match=r"2008_000002.jpg: trainval_merged.json holds ids \[460\] outside 0-459"):
        prepare_pascal_context(voc2010, json_root)


@pytest.mark.parametrize(
    ("argv", "cores", "workers"),
    [
        (["voc_aug", "--workers", "3"], 7, 3),
        (["--workers", "5", "voc_aug"], 7, 5),
        (["--workers", "5", "voc_aug", "--workers", "2"], 7, 2),
        (["voc_aug"], 7, 7),
        (["voc_aug"], 64, 8),  # each worker imports torch: the default stops at 8
    ],
)
def test_workers_option_before_or_after_the_benchmark_name(argv, cores, workers, monkeypatch, capsys, tmp_path):
    calls = []
    monkeypatch.setattr(voc_aug, "prepare_voc_aug", lambda *args: calls.append(args) or {"val": 1449})
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setenv("EMANET_DATA_ROOT", str(tmp_path))
    assert run_cli(monkeypatch, capsys, *argv) == (0, "")
    assert calls == [(tmp_path / "VOCdevkit" / "VOC2012", tmp_path / "benchmark_RELEASE", workers)]


def test_split_of_another_size_ends_the_script_with_status_1_after_writing_everything(
    voc_and_sbd, monkeypatch, capsys
):
    voc, sbd, _, _ = voc_and_sbd
    argv = ["voc_aug", "--workers", "1", "--voc", str(voc), "--sbd", str(sbd)]
    status, err = run_cli(monkeypatch, capsys, *argv)
    assert status == 1
    assert [line for line in err.splitlines() if "error" in line] == [
        "error: voc_aug train: 2 images, but the published split has 1464; voc_aug val: 1 images, but the "
        "published split has 1449; voc_aug trainaug: 4 images, but the published split has 10582. Check that "
        "every archive of data/README.md is unpacked completely and re-run (files already written are kept), "
        "or pass --allow-partial for a deliberately partial copy"
    ]
    assert len(list((voc / "SegmentationClassAug").glob("*.png"))) == 5
    status, err = run_cli(monkeypatch, capsys, "--allow-partial", *argv)
    assert status == 0 and "error" not in err
    status, err = run_cli(monkeypatch, capsys, *argv, "--allow-partial")  # after the benchmark name too
    assert status == 0 and "error" not in err


def test_missing_or_damaged_mat_file_names_it_and_its_archive(voc_and_sbd):
    voc, sbd, _, _ = voc_and_sbd
    mat = sbd / "dataset" / "cls" / "2008_d.mat"
    mat.unlink()
    with pytest.raises(DatasetError) as raised:
        prepare_voc_aug(voc, sbd)
    assert str(raised.value) == f"{mat}: MATLAB file is missing; unpack it again from benchmark.tgz and re-run"
    mat.write_bytes(b"MATLAB 5.0 MAT-file, cut short")
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(mat))}: cannot read the MATLAB file \(.*\); "
                       r"unpack it again from benchmark\.tgz and re-run$"):
        prepare_voc_aug(voc, sbd)


def test_coco_stuff164k_stuff_only_maps_are_refused(tmp_path):
    # stuff_annotations_trainval2017.zip: 0 unlabelled, 92-182 stuff, 183 "other". Read as
    # stuffthing maps, 0 would become person and every stuff class would shift by one.
    root = tmp_path / "coco_stuff164k"
    for split in ("train2017", "val2017"):
        write_jpeg(root / "images" / split / "000000000009.jpg")
        (root / "annotations" / split).mkdir(parents=True)
        stuff_only = np.array([[0, 92, 183, 182, 0, 0, 0, 0]] * 6, dtype=np.uint8)
        Image.fromarray(stuff_only, mode="L").save(root / "annotations" / split / "000000000009.png")
    png = root / "annotations" / "train2017" / "000000000009.png"
    with pytest.raises(DatasetError) as raised:
        prepare_coco_stuff164k(root)
    assert str(raised.value) == (
        f"{png}: ids [182, 183] are neither 0-181 nor 255: not a stuffthing map; "
        "unpack stuffthingmaps_trainval2017.zip (not the stuff-only maps)"
    )
    assert not (root / "labels171" / "train2017" / "000000000009.png").exists()


def test_context_json_mask_of_another_size_names_the_image(tmp_path):
    voc2010 = tmp_path / "VOC2010"
    write_jpeg(voc2010 / "JPEGImages" / "2008_000002.jpg")
    image = {"image_id": 1, "file_name": "2008_000002.jpg", "height": 6, "width": 8, "phase": "train"}
    segment = {"image_id": 1, "category_id": 2, "segmentation": {"size": [5, 7], "counts": [0, 35]}}
    (voc2010 / "trainval_merged.json").write_text(json.dumps({"images": [image], "annos_segmentation": [segment]}))
    with pytest.raises(DatasetError) as raised:
        prepare_pascal_context(voc2010, voc2010)
    assert str(raised.value) == (
        "2008_000002.jpg: trainval_merged.json has a mask of size [5, 7] for an image of [6, 8] "
        "(height, width); the file is damaged, download it again"
    )


def write_context_mats(voc2010, ids, label_map):
    """VOC 2010 images, Main/{train,val}.txt and a trainval/<id>.mat LabelMap for each id."""
    for split, split_ids in ids.items():
        write_list(voc2010 / "ImageSets" / "Main" / f"{split}.txt", split_ids)
        for i in split_ids:
            write_jpeg(voc2010 / "JPEGImages" / f"{i}.jpg")
            (voc2010 / "trainval").mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(voc2010 / "trainval" / f"{i}.mat", {"LabelMap": label_map})


def write_coco_stuff10k(root, ids):
    for split, split_ids in ids.items():
        write_list(root / "imageLists" / f"{split}.txt", split_ids)
        for i in split_ids:
            write_jpeg(root / "images" / f"{i}.jpg")
            (root / "annotations").mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(root / "annotations" / f"{i}.mat", {"S": np.ones(SIZE, dtype=np.uint16)})


def write_coco_stuff164k(root, names):
    for split in ("train2017", "val2017"):
        for name in names:
            write_jpeg(root / "images" / split / f"{name}.jpg")
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros(SIZE, dtype=np.uint8)).save(root / "annotations" / split / f"{name}.png")


COCO10K_IDS = {"train": ["COCO_train2014_000000000077"], "test": ["COCO_train2014_000000000078"]}


@pytest.mark.parametrize("benchmark", ["voc_aug", "pascal_context", "coco_stuff10k", "coco_stuff164k"])
def test_every_converter_holds_the_lock_on_its_dataset_folder_while_converting(
    benchmark, voc_and_sbd, tmp_path, monkeypatch
):
    voc, sbd, _, _ = voc_and_sbd
    roots = {
        "voc_aug": voc, "pascal_context": tmp_path / "VOC2010",
        "coco_stuff10k": tmp_path / "cocostuff-10k-v1.1", "coco_stuff164k": tmp_path / "coco_stuff164k",
    }
    write_context_mats(roots["pascal_context"], {"train": ["2008_000002"], "val": []}, np.ones(SIZE, np.uint16))
    write_coco_stuff10k(roots["coco_stuff10k"], COCO10K_IDS)
    write_coco_stuff164k(roots["coco_stuff164k"], ["000000000009"])
    root = roots[benchmark]
    held = []
    convert_labels = prepare.convert_labels

    def probing_convert_labels(jobs, description, workers=1, **options):
        held.append(folder_is_locked(root))
        return convert_labels(jobs, description, workers, **options)

    monkeypatch.setattr(prepare, "convert_labels", probing_convert_labels)
    run_preparation(benchmark, voc, sbd, root)
    assert held and all(held)


def run_preparation(benchmark: str, voc, sbd, root) -> None:
    """``emanet-prepare-dataset BENCHMARK`` on the test data (``root``: the
    dataset's own root; VOC's is ``voc``)."""
    if benchmark == "voc_aug":
        prepare_voc_aug(voc, sbd)
    elif benchmark == "pascal_context":
        prepare_pascal_context(root, root)
    elif benchmark == "coco_stuff10k":
        prepare_coco_stuff10k(root)
    else:
        prepare_coco_stuff164k(root)


OLD_NS = 1_000_000_000 * 10**9  # a modification time (2001) no write of this test can give


@pytest.mark.parametrize(
    ("benchmark", "mode"), [("voc_aug", "P"), ("pascal_context", "L"), ("coco_stuff10k", "L"), ("coco_stuff164k", "L")]
)
def test_rerun_rewrites_exactly_the_outputs_that_differ_from_their_source(
    benchmark, mode, voc_and_sbd, tmp_path, caplog
):
    voc, sbd, _, _ = voc_and_sbd
    roots = {
        "voc_aug": voc, "pascal_context": tmp_path / "VOC2010",
        "coco_stuff10k": tmp_path / "cocostuff-10k-v1.1", "coco_stuff164k": tmp_path / "coco_stuff164k",
    }
    root = roots[benchmark]
    if benchmark == "pascal_context":
        write_context_mats(root, {"train": ["2008_000002", "2008_000003"], "val": []}, np.ones(SIZE, np.uint16))
    elif benchmark == "coco_stuff10k":
        write_coco_stuff10k(root, {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000079"],
                                   "test": ["COCO_train2014_000000000078"]})
    elif benchmark == "coco_stuff164k":
        write_coco_stuff164k(root, ["000000000009", "000000000025"])

    def convert():
        run_preparation(benchmark, voc, sbd, root)

    convert()
    output_folder = {"voc_aug": "SegmentationClassAug", "pascal_context": "SegmentationClassContext"}
    outputs = sorted((root / output_folder.get(benchmark, "labels171")).rglob("*.png"))
    assert len(outputs) >= 2 and all(png_mode(path) == mode for path in outputs)
    # outputs[1] is converted in a call with this many outputs (VOC: 5; Context: train's 2;
    # COCO-Stuff 10k: test's 1, of id ...078; 164k: train2017's 2).
    written_before = {"voc_aug": 5, "pascal_context": 2, "coco_stuff10k": 1, "coco_stuff164k": 2}[benchmark]
    right = {path: read_label_png(path) for path in outputs}
    for path in outputs:
        os.utime(path, ns=(OLD_NS, OLD_NS))
    wrong = outputs[1]
    write_label_png(wrong, np.where(right[wrong] == 7, 8, 7), mode)
    caplog.clear()
    convert()
    assert all(np.array_equal(read_label_png(path), right[path]) for path in outputs)
    assert png_mode(wrong) == mode
    assert [path for path in outputs if os.stat(path).st_mtime_ns != OLD_NS] == [wrong]
    rewritten = [record.getMessage() for record in caplog.records if "rewrote" in record.getMessage()]
    assert len(rewritten) == 1
    pixels = SIZE[0] * SIZE[1]
    assert rewritten[0].endswith(
        f": rewrote 1 of the {written_before} label PNGs written before, which differed from their source: "
        f"{wrong} ({pixels} of {pixels} pixels differ)"
    )


def convert_and_note(name, root, notes, hold_seconds):
    """prepare_coco_stuff10k in a process of its own, noting in ``notes/<name>.json`` when
    each label conversion started and ended and how many PNGs it wrote; the conversion
    starts ``hold_seconds`` after ``notes/<name>.converting`` appears."""
    convert_labels = prepare.convert_labels
    calls = []

    def noting_convert_labels(jobs, description, workers=1, **options):
        start = time.time()
        (notes / f"{name}.converting").touch()
        time.sleep(hold_seconds)
        written = convert_labels(jobs, description, workers, **options)
        calls.append({"start": start, "end": time.time(), "written": written})
        (notes / f"{name}.json").write_text(json.dumps(calls))
        return written

    prepare.convert_labels = noting_convert_labels
    prepare_coco_stuff10k(root)


@pytest.mark.slow
def test_two_jobs_converting_into_one_folder_take_turns(tmp_path):
    import multiprocessing

    root = tmp_path / "cocostuff-10k-v1.1"
    write_coco_stuff10k(root, COCO10K_IDS)
    spawn = multiprocessing.get_context("spawn")
    first = spawn.Process(target=convert_and_note, args=("first", root, tmp_path, 2.0))
    first.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "first.converting").exists() and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = spawn.Process(target=convert_and_note, args=("second", root, tmp_path, 0.0))
    second.start()  # while the first is converting
    first.join(120)
    second.join(120)
    assert (first.exitcode, second.exitcode) == (0, 0)
    first_calls = json.loads((tmp_path / "first.json").read_text())
    second_calls = json.loads((tmp_path / "second.json").read_text())
    assert min(call["start"] for call in second_calls) >= max(call["end"] for call in first_calls)
    assert [call["written"] for call in first_calls] == [1, 1]
    assert [call["written"] for call in second_calls] == [0, 0]  # the first's PNGs are used


def test_sbd_struct_without_segmentation_is_one_error_with_status_2(voc_and_sbd, monkeypatch, capsys):
    voc, sbd, _, _ = voc_and_sbd
    mat = sbd / "dataset" / "cls" / "2008_d.mat"
    scipy.io.savemat(mat, {"GTcls": {"Boundaries": np.zeros((20, 1), dtype=object), "CategoriesPresent": 1}})
    status, err = run_cli(monkeypatch, capsys, "--workers", "1", "voc_aug", "--voc", str(voc), "--sbd", str(sbd))
    assert status == 2
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: {mat}: GTcls has no field 'Segmentation' (has ['Boundaries', 'CategoriesPresent']): not an SBD "
        "class map; unpack it again from benchmark.tgz (dataset/cls) and re-run"
    ]


def test_sbd_labels_outside_0_20_and_255_are_refused_not_wrapped(voc_and_sbd):
    voc, sbd, _, _ = voc_and_sbd
    mat = sbd / "dataset" / "cls" / "2008_d.mat"
    segmentation = np.zeros(SIZE, dtype=np.uint16)
    segmentation[0, :3] = 20, 255, 7
    write_sbd_mat(mat, segmentation)  # the classes and 255 are kept
    prepare_voc_aug(voc, sbd)
    assert np.array_equal(read_label_png(voc / "SegmentationClassAug" / "2008_d.png"), segmentation)
    (voc / "SegmentationClassAug" / "2008_d.png").unlink()
    segmentation[1, :2] = 300, 21  # a uint8 cast would make 300 class 44
    write_sbd_mat(mat, segmentation)
    with pytest.raises(DatasetError) as raised:
        prepare_voc_aug(voc, sbd)
    assert str(raised.value) == (
        f"{mat}: GTcls.Segmentation holds ids [21, 300] that are neither 0-20 nor 255: not an SBD class map"
    )
    assert not (voc / "SegmentationClassAug" / "2008_d.png").exists()


def test_label_maps_with_fractional_values_are_refused_not_truncated(tmp_path):
    voc2010 = tmp_path / "VOC2010"
    label_map = np.full(SIZE, 2.0)  # whole numbers in a float map are fine: 2 is aeroplane, class 1
    write_context_mats(voc2010, {"train": ["2008_000002"], "val": []}, label_map)
    prepare_pascal_context(voc2010, voc2010)
    assert np.array_equal(read_label_png(voc2010 / "SegmentationClassContext" / "2008_000002.png"), np.ones(SIZE))
    (voc2010 / "SegmentationClassContext" / "2008_000002.png").unlink()
    mat = voc2010 / "trainval" / "2008_000002.mat"
    label_map[0, :2] = 2.5, np.nan
    scipy.io.savemat(mat, {"LabelMap": label_map})
    with pytest.raises(DatasetError) as raised:
        prepare_pascal_context(voc2010, voc2010)
    assert str(raised.value) == (
        f"{mat}: LabelMap holds values that are not whole numbers ([2.5, nan]), so not class ids"
    )
    assert not (voc2010 / "SegmentationClassContext" / "2008_000002.png").exists()

    coco = tmp_path / "annotation.mat"
    scipy.io.savemat(coco, {"S": np.full(SIZE, 13.7)})
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(coco))}: S holds values that are not whole numbers"):
        coco_stuff10k_label(coco, np.arange(182))
    scipy.io.savemat(coco, {"S": "not a map"})
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(coco))}: S holds <U9 values, not class ids$"):
        coco_stuff10k_label(coco, np.arange(182))


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys, tmp_path):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(coco_stuff, "prepare_coco_stuff10k", interrupted)
    try:
        status, err = run_cli(monkeypatch, capsys, "coco_stuff10k", "--root", str(tmp_path))
    except KeyboardInterrupt:  # escaping, it would stop the whole test session
        pytest.fail("KeyboardInterrupt escaped main()")
    assert (status, err) == (130, "interrupted; re-run the same command to resume\n")


@pytest.mark.slow
def test_ctrl_c_during_a_conversion_in_worker_processes_is_one_line(tmp_path):
    # A named pipe as a label map: the worker reading it waits until the test writes, so
    # Ctrl-C comes mid-conversion. A terminal sends its SIGINT to every process of the
    # group at once; here the workers get it a second before the main process, so that a
    # worker that does not ignore it prints its traceback before the main process ends it.
    root = tmp_path / "coco_stuff164k"
    write_coco_stuff164k(root, ["000000000009", "000000000025"])
    fifo = root / "annotations" / "train2017" / "000000000025.png"
    fifo.unlink()
    os.mkfifo(fifo)
    command = [sys.executable, str(REPO / "scripts" / "prepare_dataset.py"), "--workers", "2", "coco_stuff164k",
               "--root", str(root)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    writer = None
    try:
        deadline = time.monotonic() + 120
        while writer is None and process.poll() is None and time.monotonic() < deadline:
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds once a worker reads it
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.05)
        assert writer is not None
        workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        for worker in workers:
            os.kill(int(worker), signal.SIGINT)
        time.sleep(1)
        os.kill(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        if writer is not None:
            os.close(writer)
    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.splitlines()[-1] == "interrupted; re-run the same command to resume"


def test_temp_files_left_by_killed_runs_are_removed_at_the_start(voc_and_sbd, monkeypatch):
    voc, sbd, _, _ = voc_and_sbd
    lists = voc / "ImageSets" / "Segmentation"
    stale = [
        voc / "SegmentationClassAug" / ".2008_d.png.k3j2h1x0.tmp",
        voc / "JPEGImages" / ".2008_e.jpg.a8b7c6d5.tmp",
        lists / ".trainaug.txt.q1w2e3r4.tmp",
    ]
    kept = [
        voc / "SegmentationClassAug" / ".keep", voc / "JPEGImages" / "notes.tmp",
        voc / "SegmentationClass" / ".2007_a.png.z9y8x7w6.tmp",  # an input folder, not written by the converter
    ]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left behind")
    left_at_conversion = []
    convert_labels = prepare.convert_labels

    def noting_convert_labels(jobs, description, workers=1, **options):
        left_at_conversion.extend(path for path in stale if path.exists())
        return convert_labels(jobs, description, workers, **options)

    monkeypatch.setattr(prepare, "convert_labels", noting_convert_labels)
    prepare_voc_aug(voc, sbd)
    assert left_at_conversion == []
    assert [path.exists() for path in stale] == [False, False, False]
    assert all(path.read_bytes() == b"left behind" for path in kept)


def test_listed_ids_without_images_are_refused_naming_them_and_the_folder(voc_and_sbd, tmp_path):
    voc, sbd, _, _ = voc_and_sbd
    (sbd / "dataset" / "img" / "2008_d.jpg").unlink()  # SBD's copy is missing too: no image at all
    with pytest.raises(DatasetError) as raised:
        prepare_voc_aug(voc, sbd)
    assert str(raised.value) == (
        f"{voc / 'JPEGImages'}: no image <id>.jpg for 1 listed ids (2008_d); "
        "unpack VOCtrainval_11-May-2012.tar and benchmark.tgz completely and re-run"
    )
    assert not (voc / "SegmentationClassAug").exists()  # refused before converting anything

    voc2010 = tmp_path / "VOC2010"
    write_context_mats(voc2010, {"train": ["2008_000002"], "val": ["2008_000007"]}, np.ones(SIZE, np.uint16))
    (voc2010 / "JPEGImages" / "2008_000007.jpg").unlink()
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(voc2010 / 'JPEGImages'))}: no image <id>.jpg for 1 "
                       r"listed ids \(2008_000007\); unpack VOCtrainval_03-May-2010.tar completely and re-run$"):
        prepare_pascal_context(voc2010, voc2010)

    coco = tmp_path / "cocostuff-10k-v1.1"
    ids = [f"COCO_train2014_{n:012d}" for n in range(8)]
    write_coco_stuff10k(coco, {"train": ids[:6], "test": ids[6:]})
    for i in [ids[0], *ids[2:]]:
        (coco / "images" / f"{i}.jpg").unlink()
    with pytest.raises(DatasetError) as raised:
        prepare_coco_stuff10k(coco)
    assert str(raised.value) == (
        f"{coco / 'images'}: no image <id>.jpg for 7 listed ids ({ids[0]}, {ids[2]}, {ids[3]}, {ids[4]}, {ids[5]} "
        "and 2 more); unpack cocostuff-10k-v1.1.zip completely and re-run"
    )

    coco164k = tmp_path / "coco_stuff164k"
    write_coco_stuff164k(coco164k, ["000000000009"])
    (coco164k / "images" / "val2017" / "000000000009.jpg").unlink()
    with pytest.raises(DatasetError, match=r"no image <id>.jpg for 1 listed ids \(val2017/000000000009\); "
                       "unpack COCO 2017's train2017.zip and val2017.zip completely"):
        prepare_coco_stuff164k(coco164k)
