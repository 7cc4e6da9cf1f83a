"""Every label checked before the first iteration (and cached), and a stop for bad data
mid-run that leaves a checkpoint to resume from."""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, compose_config
from PIL import Image
from tests_paths import REPO

import emanet.data.label_check as label_check
from emanet.benchmarks.label_check import label_check_benchmark
from emanet.data.classes import VOC_CLASSES
from emanet.data.palette import read_label_png, save_label_png
from emanet.data.segmentation import SegmentationDataset
from emanet.engine.train import train
from emanet.errors import DatasetError

# TINY with checkpoints only at the end: a checkpoint at an earlier iteration can only come
# from the stop for bad data.
SPARSE_CHECKPOINTS = [o for o in TINY if not o.startswith("schedule.checkpoint_every")] + [
    "schedule.checkpoint_every=100"
]
# The demo's labels come from no converter: the fix is the file itself.
FIX = "correct the label file, or set dataset.skip_bad=true to leave such samples out"


@pytest.fixture(autouse=True)
def label_cache(tmp_path, monkeypatch):
    """The cache of label checks in the test's folder, never in the real home."""
    cache = tmp_path / "label_cache"
    monkeypatch.setenv(label_check.CACHE_ENV, str(cache))
    return cache


@pytest.fixture
def demo(data_root, tmp_path):
    """A copy of the demo dataset of TINY's size under tmp_path/data (which the test may damage)."""
    shutil.copytree(data_root / "demo", tmp_path / "data" / "demo")
    return tmp_path / "data" / "demo" / "VOC2012"


def put_values(path: Path, *values: int) -> None:
    label = read_label_png(path)
    label[2, 3 : 3 + len(values)] = values
    save_label_png(label, path)


def counting_reads(monkeypatch) -> list[Path]:
    """The label files the check decodes, in order."""
    reads = []
    real = label_check.read_label_values

    def read(path):
        reads.append(Path(path))
        return real(path)

    monkeypatch.setattr(label_check, "read_label_values", read)
    return reads


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_bad_label_stops_training_before_the_first_iteration(demo, tmp_path, split):
    bad = demo / "SegmentationClass" / f"demo_{split}_00001.png"
    put_values(bad, 7)  # the demo has 5 classes
    run_dir = tmp_path / "run"
    with pytest.raises(DatasetError) as raised:
        train(compose_config([*TINY, f"data_root={tmp_path / 'data'}"]), run_dir)
    assert str(raised.value) == f"{bad}: value 7 is neither a class (0-4) nor dataset.ignore_index=255; {FIX}"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "config.yaml").exists()


def test_several_bad_labels_are_counted_in_the_one_line(demo, tmp_path):
    for index, values in ((1, (21, 37)), (4, (9,)), (6, (5,)), (7, (5,)), (8, (6,))):
        put_values(demo / "SegmentationClass" / f"demo_train_{index:05d}.png", *values)
    dataset = SegmentationDataset(demo, "train", ["a", "b", "c", "d", "e"])
    with pytest.raises(DatasetError) as raised:
        label_check.refuse_or_leave_out(dataset, label_check.find_bad_labels(dataset), "voc_aug")
    assert str(raised.value) == (
        f"{demo / 'SegmentationClass' / 'demo_train_00001.png'}: values 21, 37 are neither a class (0-4) nor "
        "dataset.ignore_index=255 (5 of the 10 samples of split 'train' are bad; also demo_train_00004.png, "
        "demo_train_00006.png, demo_train_00007.png and 1 more); convert the labels with "
        "`python scripts/prepare_dataset.py voc_aug` (see data/README.md), or set dataset.skip_bad=true to leave "
        "such samples out"
    )


def test_the_values_are_judged_after_the_datasets_mapping(demo):
    # reduce_zero_label (ADE20K, PASCAL Context 59): stored 0 is ignored and 1-5 are the
    # classes 0-4, so a stored 5 is good here and a stored 6 is not.
    put_values(demo / "SegmentationClass" / "demo_val_00000.png", 5)
    put_values(demo / "SegmentationClass" / "demo_val_00001.png", 6)
    dataset = SegmentationDataset(demo, "val", ["a", "b", "c", "d", "e"], reduce_zero_label=True)
    assert label_check.find_bad_labels(dataset) == {
        "demo_val_00001": f"{demo / 'SegmentationClass' / 'demo_val_00001.png'}: value 6 is neither a class "
        "(1-5, which dataset.reduce_zero_label=true shifts to 0-4) nor 0 or dataset.ignore_index=255"
    }
    with pytest.raises(DatasetError, match="neither classes 0-4 nor the ignore index 255"):
        dataset.load(1)  # what training would meet
    dataset.load(0)


def test_sizes_undecodable_files_and_palette_or_greyscale_pngs(tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / folder).mkdir(parents=True)
    ids = ["grey", "palette", "small", "corrupt", "rgb", "broken_image"]
    for sample_id in ids:
        Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(tmp_path / f"JPEGImages/{sample_id}.jpg")
        label = rng.integers(0, 21, (4 if sample_id == "small" else 5, 6), dtype=np.uint8)
        save_label_png(label, tmp_path / f"SegmentationClass/{sample_id}.png", mode="L" if sample_id == "grey" else "P")
    (tmp_path / "SegmentationClass/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("RGB", (6, 5)).save(tmp_path / "SegmentationClass/rgb.png")
    (tmp_path / "JPEGImages/broken_image.jpg").write_bytes(b"not a JPEG")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    bad = label_check.find_bad_labels(SegmentationDataset(tmp_path, "val", VOC_CLASSES))
    assert list(bad) == ["small", "corrupt", "rgb", "broken_image"]
    assert bad["small"] == f"{tmp_path / 'SegmentationClass/small.png'}: label is 6x4 but its image small.jpg is 6x5"
    assert bad["corrupt"].startswith(f"{tmp_path / 'SegmentationClass/corrupt.png'}: cannot decode the label PNG (")
    assert "got mode 'RGB'" in bad["rgb"]
    assert bad["broken_image"].startswith(f"{tmp_path / 'JPEGImages/broken_image.jpg'}: cannot read the image (")


def test_a_second_check_reads_only_the_labels_that_changed(demo, monkeypatch, label_cache):
    put_values(demo / "SegmentationClass" / "demo_train_00003.png", 7)
    reads = counting_reads(monkeypatch)
    dataset = SegmentationDataset(demo, "train", ["a", "b", "c", "d", "e"])
    first = label_check.find_bad_labels(dataset, workers=2)
    assert len(reads) == 10 and list(first) == ["demo_train_00003"]
    [cache_file] = label_cache.iterdir()
    assert cache_file.name.startswith("VOC2012-train-") and cache_file.suffix == ".json"

    reads.clear()
    assert label_check.find_bad_labels(dataset, workers=2) == first  # the bad one stays bad, unread
    assert reads == []

    touched = demo / "SegmentationClass" / "demo_train_00005.png"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    image = demo / "JPEGImages" / "demo_train_00006.jpg"  # a new image may have another size
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 1_000_000))
    assert label_check.find_bad_labels(dataset) == first
    assert reads == [touched, demo / "SegmentationClass" / "demo_train_00006.png"]

    # Other classes judge the cached values again, without reading: with 8 classes, 7 is one.
    reads.clear()
    assert label_check.find_bad_labels(SegmentationDataset(demo, "train", list("abcdefgh"))) == {}
    assert reads == []


def test_the_cache_folder_follows_the_environment(tmp_path):
    folder = label_check.label_check_cache_dir
    assert folder({"EMANET_LABEL_CHECK_CACHE": str(tmp_path)}) == tmp_path
    assert folder({"EMANET_LABEL_CHECK_CACHE": "off"}) is None
    assert folder({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "emanet" / "label_checks"
    home = Path("~/.cache/emanet/label_checks").expanduser()
    assert folder({}) == folder({"XDG_CACHE_HOME": ""}) == folder({"XDG_CACHE_HOME": "relative"}) == home


def test_without_a_cache_nothing_is_written(demo, monkeypatch, label_cache):
    monkeypatch.setenv(label_check.CACHE_ENV, "off")
    reads = counting_reads(monkeypatch)
    dataset = SegmentationDataset(demo, "val", ["a", "b", "c", "d", "e"])
    label_check.find_bad_labels(dataset)
    label_check.find_bad_labels(dataset)
    assert len(reads) == 4 and not label_cache.exists()


@pytest.mark.slow
def test_skip_bad_leaves_the_bad_sample_out_and_training_proceeds(demo, tmp_path, monkeypatch, caplog):
    bad = demo / "SegmentationClass" / "demo_train_00002.png"
    put_values(bad, 7)
    loaded = []
    real_load = SegmentationDataset.load

    def load(self, index):
        loaded.append(self.ids[index])
        return real_load(self, index)

    monkeypatch.setattr(SegmentationDataset, "load", load)
    overrides = [*TINY, f"data_root={tmp_path / 'data'}", "dataset.skip_bad=true", "schedule.iterations=2"]
    with caplog.at_level(logging.WARNING):
        metrics = train(compose_config(overrides), tmp_path / "run")
    assert f"skipping {bad}: value 7 is neither a class (0-4) nor dataset.ignore_index=255" in caplog.text
    assert "left out 1 bad sample loads of split 'train'" in caplog.text
    assert "demo_train_00002" not in loaded  # left out before training, never drawn
    assert len([i for i in loaded if i.startswith("demo_train")]) == 8  # 2 steps of 4 images
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2
    assert metrics["iteration"] == 2


@pytest.mark.slow
def test_bad_data_mid_run_writes_a_checkpoint_first_and_the_same_command_resumes(
    data_root, tmp_path, monkeypatch, caplog
):
    overrides = [*SPARSE_CHECKPOINTS, f"data_root={data_root}", "schedule.iterations=3"]
    drawn = 0
    real_getitem = SegmentationDataset.__getitem__

    def getitem(self, index):
        nonlocal drawn
        drawn += 1
        if drawn == 5:  # the first image of the 2nd batch of 4, mid-epoch: iteration 1 completed
            raise DatasetError(f"{self.image_path(index[0])}: cannot decode the image (truncated)")
        return real_getitem(self, index)

    monkeypatch.setattr(SegmentationDataset, "__getitem__", getitem)
    run_dir = tmp_path / "run"
    with pytest.raises(DatasetError) as raised:
        train(compose_config(overrides), run_dir)
    checkpoint = run_dir / "checkpoints" / "iter_0000001.pt"
    message = str(raised.value)
    assert message.endswith(
        f": cannot decode the image (truncated); checkpoint {checkpoint} written at iteration 1; fix the file "
        "(or set dataset.skip_bad=true) and re-run the same command to resume"
    )
    assert message.startswith(f"{data_root / 'demo' / 'VOC2012' / 'JPEGImages' / 'demo_train_'}")
    state = torch.load(checkpoint, weights_only=True)
    assert state["iteration"] == 1 and state["batches_drawn"] == [1]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["iter_0000001.pt", "last.pt"]

    monkeypatch.setattr(SegmentationDataset, "__getitem__", real_getitem)  # the file fixed
    with caplog.at_level(logging.INFO, logger="emanet.engine.train"):
        train(compose_config(overrides), run_dir)
    assert f"resuming from {checkpoint} (iteration 1)" in caplog.text
    train(compose_config(overrides), tmp_path / "uninterrupted")
    resumed, uninterrupted = (
        torch.load(path / "checkpoints" / "last.pt", weights_only=True)
        for path in (run_dir, tmp_path / "uninterrupted")
    )
    assert resumed["iteration"] == 3 and resumed["batches_drawn"] == uninterrupted["batches_drawn"] == [3]
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name


def test_bad_data_at_the_first_iteration_says_no_checkpoint_was_written(data_root, tmp_path, monkeypatch):
    def getitem(self, index):
        raise DatasetError(f"{self.label_path(index[0])}: cannot decode the label PNG (truncated)")

    monkeypatch.setattr(SegmentationDataset, "__getitem__", getitem)
    with pytest.raises(DatasetError, match=r"\(truncated\); no iteration had completed, so no checkpoint was "
                       r"written; fix the file \(or set dataset.skip_bad=true\) and re-run the same command$"):
        train(compose_config([*SPARSE_CHECKPOINTS, f"data_root={data_root}"]), tmp_path / "run")
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))



def test_under_ddp_every_process_learns_of_bad_data_met_by_another(monkeypatch):
    # This process draws its batch; another one met a bad file. The collectives as they
    # answer under DDP: the largest flag, and every process's message in rank order.
    import emanet.engine.train as train_module

    monkeypatch.setattr(train_module, "all_reduce_max", lambda flag: max(flag, 1))
    monkeypatch.setattr(train_module, "gather_from_every_process", lambda own: [own, "/d/b.jpg: cannot decode"])
    assert train_module.draw_micro_batches(iter([{"id": "a"}]), 1) == ([], "/d/b.jpg: cannot decode")
    monkeypatch.setattr(train_module, "all_reduce_max", lambda flag: flag)  # none did
    assert train_module.draw_micro_batches(iter([{"id": "a"}, {"id": "b"}]), 2) == ([{"id": "a"}, {"id": "b"}], None)


def test_the_benchmark_writes_its_results_to_a_run_directory_and_deletes_its_data(tmp_path, capsys):
    published = (REPO / "docs" / "benchmarks.md").read_bytes()
    label_check_benchmark(tmp_path / "out", count=24, workers=[0, 2], mode="P", docs=REPO / "docs")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["files"] == 24 and [row["workers"] for row in results["rows"]] == [0, 2]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["results.json", "results.md"]
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == published
    assert "| 2 | 24 |" in capsys.readouterr().out
