"""Bad dataset files: one clear error naming the file, or skipped and counted with skip_bad."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from emanet.data.classes import VOC_CLASSES
from emanet.data.palette import save_label_png
from emanet.data.segmentation import SegmentationDataset, collate_skipping_bad
from emanet.errors import DatasetError, DatasetNotFoundError, one_line

IDS = ["a", "b", "c"]


@pytest.fixture
def voc(tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / folder).mkdir(parents=True)
    for i in IDS:
        Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(tmp_path / "JPEGImages" / f"{i}.jpg")
        save_label_png(rng.integers(0, 21, (5, 6), dtype=np.uint8), tmp_path / "SegmentationClass" / f"{i}.png")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("\n".join(IDS) + "\n")
    return tmp_path


def test_image_without_label(voc):
    (voc / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"SegmentationClass/b.png: label of image b.jpg is missing.*skip_bad"):
        SegmentationDataset(voc, "val", VOC_CLASSES)
    dataset = SegmentationDataset(voc, "val", VOC_CLASSES, skip_bad=True)
    assert dataset.ids == ["a", "c"] and dataset.num_skipped == 1


def test_label_without_image(voc):
    (voc / "JPEGImages" / "c.jpg").unlink()
    with pytest.raises(DatasetError, match=r"JPEGImages/c.jpg: image listed in .*val.txt is missing"):
        SegmentationDataset(voc, "val", VOC_CLASSES)
    assert SegmentationDataset(voc, "val", VOC_CLASSES, skip_bad=True).ids == ["a", "b"]


@pytest.mark.parametrize("skip_bad", [False, True])
def test_unprepared_label_folder_says_how_to_prepare_it_even_with_skip_bad(voc, skip_bad):
    # Raw VOC has val.txt but no SegmentationClassAug until prepare_dataset.py runs.
    with pytest.raises(DatasetNotFoundError) as raised:
        SegmentationDataset(voc, "val", VOC_CLASSES, {"labels": "SegmentationClassAug/{id}.png"}, skip_bad=skip_bad)
    assert str(raised.value) == (
        f"{voc / 'SegmentationClassAug'}: folder of the labels does not exist; prepare the benchmark with "
        "`python scripts/prepare_dataset.py <name>` (see data/README.md) or fix dataset.layout"
    )


def test_empty_split_list(voc):
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n\n")
    with pytest.raises(DatasetNotFoundError, match=r"split list .*val.txt is empty: see data/README.md"):
        SegmentationDataset(voc, "val", VOC_CLASSES)


def break_files(voc):
    """a: truncated JPEG; b: label 4x6 for a 5x6 image; c: label value 21 in a 21-class set."""
    jpeg = (voc / "JPEGImages" / "a.jpg").read_bytes()
    (voc / "JPEGImages" / "a.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    save_label_png(np.zeros((4, 6), dtype=np.uint8), voc / "SegmentationClass" / "b.png")
    label = np.zeros((5, 6), dtype=np.uint8)
    label[1, 1], label[2, 2], label[3, 3] = 21, 255, 40
    save_label_png(label, voc / "SegmentationClass" / "c.png")


def test_bad_files_raise_an_error_naming_the_file(voc):
    break_files(voc)
    dataset = SegmentationDataset(voc, "val", VOC_CLASSES)
    with pytest.raises(DatasetError, match=r"JPEGImages/a.jpg: cannot decode the image"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"SegmentationClass/b.png: label is 6x4 but its image b.jpg is 6x5"):
        dataset[1]
    with pytest.raises(DatasetError, match=r"Class/c.png: label values \[21, 40\] are neither classes 0-20 "):
        dataset[2]


def test_corrupt_png(voc):
    (voc / "SegmentationClass" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DatasetError, match=r"SegmentationClass/b.png: cannot decode the label PNG"):
        SegmentationDataset(voc, "val", VOC_CLASSES)[1]


def test_error_in_a_loader_worker_reaches_the_user_as_one_line(voc):
    break_files(voc)
    loader = DataLoader(SegmentationDataset(voc, "val", VOC_CLASSES), batch_size=1, num_workers=1)
    with pytest.raises(DatasetError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)
    message = one_line(caught.value)
    assert message.startswith(str(voc / "JPEGImages" / "a.jpg")) and "\n" not in message


@pytest.mark.slow
def test_skip_bad_leaves_out_bad_samples_in_workers_and_counts_them(voc):
    break_files(voc)
    (voc / "ImageSets/Segmentation/val.txt").write_text("a\nb\nc\nd\n")
    Image.fromarray(np.zeros((5, 6, 3), dtype=np.uint8)).save(voc / "JPEGImages" / "d.jpg")
    save_label_png(np.full((5, 6), 7, dtype=np.uint8), voc / "SegmentationClass" / "d.png")
    dataset = SegmentationDataset(voc, "val", VOC_CLASSES, skip_bad=True)
    loader = DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate_skipping_bad)
    batches = list(loader)
    assert batches[0] is None  # a and b are both bad
    assert batches[1]["id"] == ["d"] and torch.all(batches[1]["label"] == 7)
    assert dataset.num_skipped == 3  # counted in the worker, read in this process
