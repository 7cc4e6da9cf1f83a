"""Cityscapes: the labelIds -> trainIds mapping against cityscapesscripts' own table, the
converter on a miniature tree in the official layout, and the experiments' configs."""

import json
import os
import re
import shutil
import sys

import cv2
import numpy as np
import pytest
from helpers import folder_is_locked, run_cli, write_label_png
from PIL import Image

from emanet.cli import compose_config
from emanet.config_checks import config_problems
from emanet.data import build_dataset, dataset_class_names, prepare
from emanet.data.cityscapes import cityscapes_label, cityscapes_lookup_table, prepare_cityscapes
from emanet.data.classes import CITYSCAPES_CLASSES
from emanet.data.palette import read_label_png
from emanet.errors import DatasetError

SIZE = (4, 6)
# Every labelId of the official table (0-33) in one map; each image of the tree gets a
# rotation of it.
ALL_IDS = np.arange(34, dtype=np.uint8).reshape(2, 17)
TREE = {
    "train": {"aachen": ["aachen_000000_000019", "aachen_000001_000019"], "bochum": ["bochum_000000_000313"]},
    "val": {"frankfurt": ["frankfurt_000000_000294"]},
    "test": {"berlin": ["berlin_000000_000019", "berlin_000001_000019"]},
}


@pytest.fixture
def official():
    return pytest.importorskip("cityscapesscripts.helpers.labels")


def source_ids(seed):
    return np.roll(np.resize(ALL_IDS, SIZE), seed)


def write_tree(root):
    """leftImg8bit/<split>/<city>/<name>_leftImg8bit.png (RGB) and gtFine/<split>/<city>/
    <name>_gtFine_labelIds.png (mode L); test's gtFine maps are the download's placeholders."""
    sources = {}
    for split, cities in TREE.items():
        for city, names in cities.items():
            for name in names:
                seed = len(sources)
                image = root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
                image.parent.mkdir(parents=True, exist_ok=True)
                pixels = np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(image)
                label = root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png"
                label.parent.mkdir(parents=True, exist_ok=True)
                ids = np.zeros(SIZE, np.uint8) if split == "test" else source_ids(seed)
                Image.fromarray(ids, mode="L").save(label)
                sources[f"{split}/{city}/{name}"] = ids
    return sources


def expected_train_ids(ids, labels):
    table = {label.id: (label.trainId if 0 <= label.trainId < 255 else 255) for label in labels}
    return np.vectorize(table.__getitem__)(ids).astype(np.uint8)


def test_mapping_matches_cityscapesscripts_id_by_id(official):
    table = cityscapes_lookup_table()
    assert sorted(label.id for label in official.labels) == [-1, *range(34)]
    for label in official.labels:
        if label.id == -1:  # license plate: never drawn into a labelIds PNG (json2labelImg skips id < 0)
            assert label.trainId == -1
            continue
        expected = label.trainId if label.trainId not in (-1, 255) else 255
        assert table[label.id] == expected, label.name
    assert (table[34:] == -1).all()  # undefined ids are refused, not mapped
    # The 19 trainIds in order are the dataset's class names.
    train_names = [label.name for label in sorted(official.labels, key=lambda x: x.trainId) if 0 <= label.trainId < 255]
    assert train_names == list(CITYSCAPES_CLASSES)
    cfg = compose_config("train", ["dataset=cityscapes"])
    assert list(dataset_class_names(cfg.dataset)) == train_names and cfg.dataset.num_classes == 19


@pytest.mark.slow
def test_converter_writes_train_ids_and_split_lists_the_dataset_reads(official, tmp_path, caplog):
    root = tmp_path / "cityscapes"
    sources = write_tree(root)
    counts = prepare_cityscapes(root, workers=2)
    assert counts == {"train": 3, "val": 1, "test": 2}
    assert "cityscapes train: 3 images, but the published split has 2975" in caplog.text
    splits = root / "splits"
    assert (splits / "train.txt").read_text().split() == [
        "train/aachen/aachen_000000_000019", "train/aachen/aachen_000001_000019", "train/bochum/bochum_000000_000313"
    ]
    assert (splits / "val.txt").read_text() == "val/frankfurt/frankfurt_000000_000294\n"
    assert (splits / "test.txt").read_text().split() == [
        "test/berlin/berlin_000000_000019", "test/berlin/berlin_000001_000019"
    ]
    for sample_id, ids in sources.items():
        written = root / "gtFine" / f"{sample_id}_gtFine_labelTrainIds.png"
        if sample_id.startswith("test/"):
            assert not written.exists()  # test's placeholders are not converted
        else:
            expected = expected_train_ids(ids, official.labels)
            assert np.array_equal(read_label_png(written), expected)
            # 8-bit greyscale, as createTrainIdLabelImgs writes them: a greyscale read (OpenCV's,
            # Pillow's convert("L")) gives the trainIds, where a palette PNG's gives its colours.
            with Image.open(written) as png:
                assert png.mode == "L"
                assert np.array_equal(np.array(png.convert("L")), expected)
            assert np.array_equal(cv2.imread(str(written), cv2.IMREAD_GRAYSCALE), expected)
    cfg = compose_config("train", ["dataset=cityscapes", f"data_root={tmp_path}"])
    dataset = build_dataset(cfg.dataset, cfg.dataset.val_split)
    image, label = dataset.load(0)[:2]
    assert image.shape == (*SIZE, 3)
    assert np.array_equal(label, expected_train_ids(sources["val/frankfurt/frankfurt_000000_000294"], official.labels))
    assert len(build_dataset(cfg.dataset, cfg.dataset.train_split)) == 3


OLD_NS = 1_000_000_000 * 10**9  # a modification time (2001) no write of this test can give


@pytest.mark.slow
def test_rerun_rewrites_exactly_the_outputs_that_differ_from_their_source_and_says_so(official, tmp_path, caplog):
    root = tmp_path / "cityscapes"
    sources = write_tree(root)
    prepare_cityscapes(root)
    gtfine = root / "gtFine"
    written = {i: gtfine / f"{i}_gtFine_labelTrainIds.png" for i in sources if not i.startswith("test/")}
    for path in written.values():
        os.utime(path, ns=(OLD_NS, OLD_NS))
    wrong_ids, palette, corrupt, right = (
        "train/aachen/aachen_000000_000019", "train/aachen/aachen_000001_000019",
        "train/bochum/bochum_000000_000313", "val/frankfurt/frankfurt_000000_000294",
    )
    expected = {i: expected_train_ids(sources[i], official.labels) for i in written}
    wrong = expected[wrong_ids].copy()
    wrong[0, :3] = np.where(wrong[0, :3] == 0, 1, 0)  # 3 pixels off, in the mode this converter writes
    write_label_png(written[wrong_ids], wrong, "L")
    write_label_png(written[palette], expected[palette], "P")  # right ids, as former versions wrote them
    written[corrupt].write_bytes(b"sentinel")
    stale = written[corrupt].with_name(f".{written[corrupt].name}.x1y2.tmp")  # what an interrupted write leaves
    stale.write_bytes(b"half")
    caplog.clear()
    prepare_cityscapes(root, workers=2)  # the reasons come back from worker processes
    for sample_id, path in written.items():
        with Image.open(path) as png:
            assert png.mode == "L" and np.array_equal(np.array(png), expected[sample_id]), sample_id
    assert os.stat(written[right]).st_mtime_ns == OLD_NS  # a right file is read, not written
    assert not stale.exists()
    rewritten = [record.getMessage() for record in caplog.records if "rewrote" in record.getMessage()]
    assert rewritten == [
        "gtFine labelTrainIds (train): rewrote 3 of the 3 label PNGs written before, which differed from their "
        f"source: {written[wrong_ids]} (3 of 24 pixels differ), {written[palette]} (mode 'P', not 'L'), "
        f"{written[corrupt]} (does not decode)"
    ]
    # A third run finds every file right.
    for path in written.values():
        os.utime(path, ns=(OLD_NS, OLD_NS))
    caplog.clear()
    prepare_cityscapes(root)
    assert [os.stat(path).st_mtime_ns for path in written.values()] == [OLD_NS] * 4
    assert "rewrote" not in caplog.text


def test_a_missing_output_is_written_again(official, tmp_path):
    root = tmp_path / "cityscapes"
    sources = write_tree(root)
    prepare_cityscapes(root)
    redo = root / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelTrainIds.png"
    redo.unlink()
    prepare_cityscapes(root)
    assert np.array_equal(
        read_label_png(redo), expected_train_ids(sources["train/aachen/aachen_000001_000019"], official.labels)
    )


def write_polygons(path, size, seed, labels):
    """A ``*_gtFine_polygons.json`` as the download has them: every label of the table, with
    overlapping random polygons, plus a "cargroup" (drawn as car) and a deleted object."""
    rng = np.random.default_rng(seed)
    height, width = size
    names = [*(label.name for label in labels), "cargroup"]  # license plate (id -1) is drawn by neither
    objects = [
        {"label": str(name), "polygon": rng.integers(-2, [width + 2, height + 2], (rng.integers(3, 8), 2)).tolist()}
        for name in rng.permutation(names)
    ]
    objects.append({"label": "road", "polygon": [[0, 0], [width, 0], [width, height]], "deleted": 1})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"imgHeight": height, "imgWidth": width, "objects": objects}))


@pytest.mark.slow
def test_train_ids_equal_createTrainIdLabelImgs_file_mode_and_pixels(official, tmp_path, monkeypatch):
    """labelIds made from polygons by the official json2labelImg, converted here, against
    createTrainIdLabelImgs' trainIds from the same polygons (cityscapesscripts 2.3.0,
    cityscapesscripts/preparation/createTrainIdLabelImgs.py)."""
    json2label = pytest.importorskip("cityscapesscripts.preparation.json2labelImg")
    create_train_ids = pytest.importorskip("cityscapesscripts.preparation.createTrainIdLabelImgs")
    root, theirs = tmp_path / "cityscapes", tmp_path / "official"
    write_tree(root)
    size = (24, 40)
    labelled = [f"{split}/{city}/{name}" for split in ("train", "val") for city, names in TREE[split].items()
                for name in names]
    for seed, sample_id in enumerate(labelled):
        polygons = root / "gtFine" / f"{sample_id}_gtFine_polygons.json"
        write_polygons(polygons, size, seed, official.labels)
        json2label.json2labelImg(str(polygons), str(root / "gtFine" / f"{sample_id}_gtFine_labelIds.png"), "ids")
    shutil.copytree(root / "gtFine", theirs / "gtFine")
    monkeypatch.setenv("CITYSCAPES_DATASET", str(theirs))
    create_train_ids.main()
    prepare_cityscapes(root, workers=2)
    classes = set()
    for sample_id in labelled:
        ours_path = root / "gtFine" / f"{sample_id}_gtFine_labelTrainIds.png"
        theirs_path = theirs / "gtFine" / f"{sample_id}_gtFine_labelTrainIds.png"
        with Image.open(ours_path) as ours, Image.open(theirs_path) as official_png:
            assert (ours.format, ours.mode, ours.size) == (official_png.format, official_png.mode, official_png.size)
            assert ours.mode == "L"
            assert ours.tobytes() == official_png.tobytes(), sample_id
            classes |= set(np.unique(np.array(ours)).tolist())
        # What OpenCV reads, as loaders built on it do: the same ids from both.
        ours_cv, theirs_cv = (cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in (ours_path, theirs_path))
        assert ours_cv.shape == size and np.array_equal(ours_cv, theirs_cv)
    assert len(classes) >= 15  # the polygons reach most trainIds and 255, not a trivial map
    assert 255 in classes


def test_converter_holds_the_lock_on_the_dataset_folder(official, tmp_path, monkeypatch):
    root = tmp_path / "cityscapes"
    write_tree(root)
    held, convert_labels = [], prepare.convert_labels

    def probing_convert_labels(jobs, description, workers=1, **options):
        held.append(folder_is_locked(root))
        return convert_labels(jobs, description, workers, **options)

    monkeypatch.setattr(prepare, "convert_labels", probing_convert_labels)
    prepare_cityscapes(root)
    assert held == [True, True]


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_label_values_outside_the_table_are_refused_naming_the_file(official, workers, tmp_path, monkeypatch, capsys):
    root = tmp_path / "cityscapes"
    write_tree(root)
    bad = root / "gtFine" / "train" / "bochum" / "bochum_000000_000313_gtFine_labelIds.png"  # 3 train maps: 2 workers
    ids = source_ids(0)
    ids[0, :2] = [34, 255]
    Image.fromarray(ids, mode="L").save(bad)
    status, err = run_cli(monkeypatch, capsys, "cityscapes", "--workers", workers, "--root", str(root))
    assert status == 2 and "Traceback" not in err
    assert error_lines(err) == [
        f"error: {bad}: ids [34, 255] are not labelIds of the official Cityscapes table (0-33): not a "
        "gtFine_labelIds.png; unpack it again from gtFine_trainvaltest.zip and re-run"
    ]
    assert not bad.with_name("bochum_000000_000313_gtFine_labelTrainIds.png").exists()
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(bad))}: cannot read the label PNG"):
        cityscapes_label(bad, cityscapes_lookup_table())


def test_annotated_ids_without_images_are_refused_before_converting(official, tmp_path):
    root = tmp_path / "cityscapes"
    write_tree(root)
    (root / "leftImg8bit" / "train" / "bochum" / "bochum_000000_000313_leftImg8bit.png").unlink()
    with pytest.raises(DatasetError) as raised:
        prepare_cityscapes(root)
    assert str(raised.value) == (
        f"{root / 'leftImg8bit'}: no image <id>_leftImg8bit.png for 1 annotated ids "
        "(train/bochum/bochum_000000_000313); unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
        "completely and re-run"
    )
    assert not list((root / "gtFine").rglob("*_labelTrainIds.png"))
    assert not (root / "splits").exists()


@pytest.mark.slow
def test_split_counts_are_checked_unless_allow_partial(official, tmp_path, monkeypatch, capsys):
    root = tmp_path / "cityscapes"
    write_tree(root)
    monkeypatch.setenv("EMANET_DATA_ROOT", str(tmp_path))  # --root defaults to $EMANET_DATA_ROOT/cityscapes
    status, err = run_cli(monkeypatch, capsys, "cityscapes", "--workers", "1")
    assert status == 1
    assert error_lines(err) == [
        "error: cityscapes train: 3 images, but the published split has 2975; cityscapes val: 1 images, but the "
        "published split has 500; cityscapes test: 2 images, but the published split has 1525. Check that every "
        "archive of data/README.md is unpacked completely and re-run (files already written are kept), or pass "
        "--allow-partial for a deliberately partial copy"
    ]
    assert len(list((root / "gtFine").rglob("*_labelTrainIds.png"))) == 4
    assert run_cli(monkeypatch, capsys, "cityscapes", "--allow-partial")[0] == 0
    # The published sizes pass.
    assert prepare.count_mismatches("cityscapes", {"train": 2975, "val": 500, "test": 1525}) == []


def test_allow_partial_names_the_images_left_out_for_want_of_a_label(official, tmp_path, monkeypatch, capsys, caplog):
    root = tmp_path / "cityscapes"
    write_tree(root)
    for sample_id in ("train/aachen/aachen_000001_000019", "train/bochum/bochum_000000_000313"):
        (root / "gtFine" / f"{sample_id}_gtFine_labelIds.png").unlink()  # the image stays
    status, err = run_cli(monkeypatch, capsys, "cityscapes", "--allow-partial", "--root", str(root))
    assert status == 0 and error_lines(err) == []
    assert (root / "splits" / "train.txt").read_text() == "train/aachen/aachen_000000_000019\n"
    left_out = [record.getMessage() for record in caplog.records if "left out" in record.getMessage()]
    assert left_out == [
        f"cityscapes train: 2 images of {root / 'leftImg8bit' / 'train'} have no <id>_gtFine_labelIds.png in "
        f"{root / 'gtFine' / 'train'} and are left out of the split "
        "(train/aachen/aachen_000001_000019, train/bochum/bochum_000000_000313)"
    ]
    assert all(record.levelname == "WARNING" for record in caplog.records if "left out" in record.getMessage())


def test_missing_cityscapesscripts_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit").mkdir(parents=True)
    (root / "gtFine").mkdir()
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", None)  # import fails
    status, err = run_cli(monkeypatch, capsys, "cityscapes", "--root", str(root))
    assert status == 2 and "Traceback" not in err
    assert error_lines(err) == [
        "error: the Cityscapes conversion takes the official label table from the package cityscapesscripts, "
        'which is not installed: pip install -e ".[cityscapes]"'
    ]


def test_missing_download_names_the_folder(tmp_path, monkeypatch, capsys):
    status, err = run_cli(monkeypatch, capsys, "cityscapes", "--root", str(tmp_path / "nowhere"))
    assert status == 2
    assert error_lines(err) == [
        f"error: Cityscapes images (leftImg8bit) not found at {tmp_path / 'nowhere' / 'leftImg8bit'}: "
        "see data/README.md"
    ]


@pytest.mark.parametrize(("experiment", "depth"), [("cityscapes_emanet512", 101), ("cityscapes_r50_emanet512", 50)])
def test_experiments_compose_with_the_cityscapes_recipe(experiment, depth):
    cfg = compose_config("train", [f"experiment={experiment}"])
    assert config_problems(cfg) == []
    assert cfg.name == experiment and cfg.dataset.name == "cityscapes"
    assert (cfg.model.backbone.depth, cfg.model.backbone.output_stride, cfg.model.ema.channels) == (depth, 8, 512)
    assert (cfg.schedule.iterations, cfg.schedule.batch_size, cfg.optim.lr) == (80000, 8, 0.01)
    assert (cfg.dataset.crop_size, cfg.dataset.scale_sampling, list(cfg.dataset.train_scales)) == (
        [512, 1024], "continuous", [0.5, 2.0]
    )
    assert (cfg.eval.mode, cfg.eval.crop_size, cfg.eval.stride, cfg.eval.flip) == (
        "slide", [512, 1024], [341, 683], True
    )
    assert cfg.loss.normalization == "all_pixels"  # as mmsegmentation's and the release's
    assert str(cfg.model.backbone.pretrained).endswith(f"resnet{depth}_deep_stem.pth")
