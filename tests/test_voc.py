"""The VOC reader on a tiny dataset written here, and the demo generator."""

import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from emanet.cli import compose_config
from emanet.data.classes import CONTEXT59_CLASSES, VOC_CLASSES
from emanet.data.demo import DEMO_CLASSES, generate_demo_dataset
from emanet.data.palette import color_map, read_label_png, save_label_png
from emanet.data.segmentation import SegmentationDataset
from emanet.data.transforms import RandomScaleFactor, eval_transform, seed_transform, train_transform
from emanet.errors import ConfigError, DatasetError, DatasetNotFoundError


def write_tiny_voc(root, ids=("2007_000032", "2007_000039"), size=(7, 9)):
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    labels = {}
    for image_id in ids:
        image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        label = rng.integers(0, 21, size=size, dtype=np.uint8)
        label[0, :] = 255  # a boundary band, as in VOC
        save_label_png(label, root / "SegmentationClass" / f"{image_id}.png")
        labels[image_id] = label
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return labels


def test_palette_png_round_trip_keeps_indices_and_255(tmp_path):
    label = np.array([[0, 1, 15], [20, 255, 3]], dtype=np.uint8)
    save_label_png(label, tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as png:
        assert png.mode == "P"
        palette = np.array(png.getpalette()[: 3 * 256]).reshape(256, 3)
    assert np.array_equal(palette[15], [192, 128, 128])  # VOC's "person" colour
    assert np.array_equal(palette[255], [224, 224, 192])  # VOC's boundary colour
    assert np.array_equal(read_label_png(tmp_path / "x.png"), label)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write leaves no temp file


def test_color_map_matches_voc_devkit():
    cmap = color_map()
    assert cmap[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert cmap[20].tolist() == [0, 64, 128]


def test_reader_returns_raw_labels_and_pillow_pixels(tmp_path):
    labels = write_tiny_voc(tmp_path)
    dataset = SegmentationDataset(tmp_path, "val", VOC_CLASSES)
    assert len(dataset) == 2 and dataset.num_classes == 21
    sample = dataset[1]
    assert sample["id"] == "2007_000039"
    assert sample["image"].shape == (3, 7, 9) and sample["image"].dtype == torch.uint8
    assert torch.equal(sample["label"], torch.from_numpy(labels["2007_000039"]).long())
    decoded = np.array(Image.open(tmp_path / "JPEGImages" / "2007_000039.jpg").convert("RGB"))
    assert torch.equal(sample["image"], torch.from_numpy(decoded).permute(2, 0, 1))


def test_eval_transform_normalises_with_imagenet_statistics(tmp_path):
    write_tiny_voc(tmp_path)
    raw = SegmentationDataset(tmp_path, "val", VOC_CLASSES)[0]["image"].float() / 255
    sample = SegmentationDataset(tmp_path, "val", VOC_CLASSES, transform=eval_transform())[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(sample["image"], (raw - mean) / std, atol=1e-5, rtol=0)


def test_train_transform_pads_bottom_right_with_zero_and_255(tmp_path):
    labels = write_tiny_voc(tmp_path)
    dataset = SegmentationDataset(
        tmp_path, "val", VOC_CLASSES, transform=train_transform(crop_size=12, scales=[1.0])
    )
    seed_transform(dataset.transform, 0)
    sample = dataset[0]
    image, label = sample["image"], sample["label"]
    assert image.shape == (3, 12, 12) and label.shape == (12, 12)
    # 7x9 image: rows 7.. and columns 9.. are padding (possibly mirrored by the flip).
    assert torch.all(label[7:] == 255) and torch.all(image[:, 7:] == 0)
    original = torch.from_numpy(labels["2007_000032"]).long()
    top_left = label[:7, :9] if torch.equal(label[:7, :9], original) else label[:7, 3:].flip(-1)
    assert torch.equal(top_left, original)


def test_a_crop_of_height_and_width_pads_each_side_to_its_own_size(tmp_path):
    # [height, width] crops (Cityscapes: [512, 1024]): a 7x9 image padded to 8 rows, 12 columns.
    labels = write_tiny_voc(tmp_path)
    dataset = SegmentationDataset(
        tmp_path, "val", VOC_CLASSES, transform=train_transform(crop_size=[8, 12], scales=[1.0])
    )
    seed_transform(dataset.transform, 0)
    sample = dataset[0]
    assert sample["image"].shape == (3, 8, 12) and sample["label"].shape == (8, 12)
    assert torch.all(sample["label"][7:] == 255)
    original = torch.from_numpy(labels["2007_000032"]).long()
    label = sample["label"]
    assert torch.equal(label[:7, :9], original) or torch.equal(label[:7, 3:].flip(-1), original)


def test_train_transform_keeps_image_and_label_aligned_and_normalises_them(tmp_path):
    # Every pixel's grey level encodes its label (20 x class), in 4x4 blocks: after scaling,
    # cropping and flipping, the de-normalised image must still spell the label.
    blocks = np.random.default_rng(0).integers(0, 12, (6, 8))
    label = np.kron(blocks, np.ones((4, 4), dtype=np.int64)).astype(np.uint8)  # 24 x 32
    image = np.repeat((20 * label)[..., None], 3, axis=2)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for scale in (1.0, 2.0):
        transform = train_transform(crop_size=16, scales=[scale])
        seed_transform(transform, 0)
        crops = set()
        for _ in range(8):
            out = transform(image=image, mask=label)
            pixels = (out["image"].numpy().transpose(1, 2, 0) * std + mean) * 255  # (16, 16, 3)
            crop_label = out["mask"].numpy().astype(np.int64)
            assert crop_label.shape == (16, 16) and 255 not in crop_label  # the image covers the crop
            crops.add(crop_label.tobytes())
            # Bilinear upscaling blends grey levels at block edges; inside a block it keeps them
            # (the crop's border is left out: its neighbours outside the crop are unknown).
            padded = np.pad(crop_label, 1, constant_values=-1)
            uniform = np.all([padded[1 + dy : 17 + dy, 1 + dx : 17 + dx] == crop_label
                              for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
            checked = uniform if scale == 2.0 else np.ones_like(uniform)
            assert checked.sum() > 50
            np.testing.assert_allclose(pixels[checked], 20.0 * crop_label[checked][:, None].repeat(3, 1), atol=1e-3)
        assert len(crops) > 4  # the crops and flips did vary


def test_missing_root_and_split_give_one_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"dataset not found at .*nowhere: see data/README.md"):
        SegmentationDataset(tmp_path / "nowhere", "val", VOC_CLASSES)
    write_tiny_voc(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"split list not found at .*trainaug.txt"):
        SegmentationDataset(tmp_path, "trainaug", VOC_CLASSES)


def _tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_demo_dataset_is_deterministic_voc_layout(tmp_path):
    first = generate_demo_dataset(tmp_path / "a" / "VOC2012", num_train=6, num_val=3, seed=3)
    second = generate_demo_dataset(tmp_path / "b" / "VOC2012", num_train=6, num_val=3, seed=3)
    assert _tree_digest(first) == _tree_digest(second)
    dataset = SegmentationDataset(first, "train", DEMO_CLASSES)
    assert len(dataset) == 6 and len(SegmentationDataset(first, "val", DEMO_CLASSES)) == 3
    values = set()
    for index in range(len(dataset)):
        image, label = dataset.load(index)
        assert image.shape[:2] == label.shape and 64 <= label.shape[0] <= 80
        values |= set(np.unique(label).tolist())
    assert 255 in values and 0 in values and len(values - {0, 255}) >= 3
    assert values <= set(range(len(DEMO_CLASSES))) | {255}


def test_the_demo_dataset_folder_gets_the_mode_of_a_plain_mkdir(tmp_path):
    previous = os.umask(0o022)
    try:
        root = generate_demo_dataset(tmp_path / "VOC2012", num_train=2, num_val=1, seed=0)
    finally:
        os.umask(previous)
    assert root.stat().st_mode & 0o777 == 0o755


def test_demo_dataset_is_reused_and_never_rebuilt_with_other_settings(tmp_path):
    root = generate_demo_dataset(tmp_path / "VOC2012", num_train=2, num_val=1, seed=0)
    before = _tree_digest(root)
    marker_time = (root / "demo_dataset.json").stat().st_mtime_ns
    generate_demo_dataset(root, num_train=2, num_val=1, seed=0)
    assert (root / "demo_dataset.json").stat().st_mtime_ns == marker_time
    with pytest.raises(DatasetError) as raised:
        generate_demo_dataset(root, num_train=3, num_val=1, seed=0)
    assert str(raised.value) == (
        f"{root} holds the demo dataset built with dataset.generate.num_train=2, and this run asks for "
        "num_train=3: it is not rebuilt, as other runs read it; pass dataset.generate.num_train=2 to use it, "
        "or another dataset.root for a demo of these settings"
    )
    with pytest.raises(DatasetError, match=r"built with dataset.generate.num_val=1 dataset.generate.seed=0, and "
                                           r"this run asks for num_val=2, seed=1:"):
        generate_demo_dataset(root, num_train=2, num_val=2, seed=1)
    assert _tree_digest(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["VOC2012"]  # no staging folder left


def test_the_demo_val_split_does_not_depend_on_the_number_of_training_images(tmp_path):
    small = generate_demo_dataset(tmp_path / "small" / "VOC2012", num_train=2, num_val=3, seed=0)
    large = generate_demo_dataset(tmp_path / "large" / "VOC2012", num_train=7, num_val=3, seed=0)
    for folder, suffix in (("JPEGImages", "jpg"), ("SegmentationClass", "png")):
        for index in range(3):
            name = f"demo_val_{index:05d}.{suffix}"
            assert (small / folder / name).read_bytes() == (large / folder / name).read_bytes()
    assert (small / "JPEGImages" / "demo_train_00001.jpg").read_bytes() == (
        large / "JPEGImages" / "demo_train_00001.jpg").read_bytes()
    other_seed = generate_demo_dataset(tmp_path / "seed1" / "VOC2012", num_train=2, num_val=3, seed=1)
    assert (other_seed / "JPEGImages" / "demo_val_00000.jpg").read_bytes() != (
        small / "JPEGImages" / "demo_val_00000.jpg").read_bytes()


def test_demo_refuses_a_folder_it_did_not_write_and_leaves_it_untouched(tmp_path):
    root = tmp_path / "my_data"
    root.mkdir()
    (root / "notes.txt").write_bytes(b"months of work\n")
    with pytest.raises(DatasetError) as raised:
        generate_demo_dataset(root, num_train=2, num_val=1, seed=0)
    assert str(raised.value) == (
        f"{root} is neither empty nor a demo dataset (no demo_dataset.json), and the demo replaces its folder: "
        "choose another dataset.root, or empty that folder"
    )
    assert [p.name for p in root.iterdir()] == ["notes.txt"]
    assert (root / "notes.txt").read_bytes() == b"months of work\n"
    assert [p.name for p in tmp_path.iterdir()] == ["my_data"]  # no staging folder left
    (root / "notes.txt").unlink()  # an empty folder may be used
    generate_demo_dataset(root, num_train=2, num_val=1, seed=0)
    assert len(SegmentationDataset(root, "train", DEMO_CLASSES)) == 2


def test_a_demo_of_an_earlier_version_is_refused_not_rebuilt(tmp_path):
    root = generate_demo_dataset(tmp_path / "VOC2012", num_train=2, num_val=1, seed=0)
    marker = json.loads((root / "demo_dataset.json").read_text())
    (root / "demo_dataset.json").write_text(json.dumps({**marker, "version": 1}))
    with pytest.raises(DatasetError) as raised:
        generate_demo_dataset(root, num_train=2, num_val=1, seed=0)
    assert str(raised.value) == (
        f"{root} holds the demo dataset of an earlier version of emanet (version 1; this one writes version 2, "
        "with other images): delete that folder to rebuild it, or pass another dataset.root"
    )
    assert len(SegmentationDataset(root, "train", DEMO_CLASSES)) == 2


def generate_and_read(rank, root, results):
    generate_demo_dataset(root, num_train=40, num_val=4, seed=0)
    dataset = SegmentationDataset(root, "train", DEMO_CLASSES)
    (results / f"read{rank}.txt").write_text(str(sum(dataset.load(i)[1].size for i in range(len(dataset)))))


@pytest.mark.slow
def test_processes_generating_the_demo_at_once_take_turns(tmp_path):
    import torch.multiprocessing as mp

    root = tmp_path / "data" / "VOC2012"
    mp.spawn(generate_and_read, args=(root, tmp_path), nprocs=2, join=True)  # raises if either failed
    reference = generate_demo_dataset(tmp_path / "reference" / "VOC2012", num_train=40, num_val=4, seed=0)
    assert _tree_digest(root) == _tree_digest(reference)
    assert (tmp_path / "read0.txt").read_text() == (tmp_path / "read1.txt").read_text()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["VOC2012"]


def test_demo_classes_share_colours():
    # Colour alone must not identify a class: every object class is drawn from the same pool.
    from emanet.data.demo import render_sample

    rng = np.random.default_rng(0)
    colours_by_class = {c: set() for c in range(1, len(DEMO_CLASSES))}
    for _ in range(60):
        image, label = render_sample(rng, 96, 96)
        for c in colours_by_class:
            pixels = image[label == c]
            if len(pixels):
                colours_by_class[c].add(int(np.argmax(np.median(pixels, axis=0))))
    dominant_channels = [channels for channels in colours_by_class.values() if channels]
    assert all(len(channels) >= 2 for channels in dominant_channels)


def test_scale_sampling_discrete_draws_the_set_and_continuous_its_range():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    discrete = RandomScaleFactor([0.5, 1.0, 2.0])
    continuous = RandomScaleFactor([0.5, 1.0, 2.0], continuous=True)
    discrete.set_random_seed(0)
    continuous.set_random_seed(0)
    drawn = [discrete.get_params()["scale"] for _ in range(50)]
    assert set(drawn) == {0.5, 1.0, 2.0}
    uniform = [continuous.get_params()["scale"] for _ in range(50)]
    assert all(0.5 <= s <= 2.0 for s in uniform) and len(set(uniform)) == 50
    assert discrete.apply(image, scale=1.5).shape == (60, 90, 3)
    assert discrete.apply_to_mask(image[..., 0], scale=0.5).shape == (20, 30)
    with pytest.raises(ConfigError, match="^dataset.scale_sampling=uniform: expected one of discrete, continuous$"):
        compose_config("train", ["dataset.scale_sampling=uniform"])


def test_random_scale_output_sizes_are_the_releases_floor_not_rounded():
    scale = RandomScaleFactor([1.0])
    image = np.zeros((101, 101, 3), dtype=np.uint8)
    assert scale.apply(image, scale=0.75).shape == (75, 75, 3)  # cv2's fx=0.75 gives 76
    assert scale.apply_to_mask(image[..., 0], scale=0.75).shape == (75, 75)
    scales = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 0.6180339]
    for height, width in [(100, 101), (101, 333), (187, 500), (375, 499), (7, 9)]:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        for s in scales:
            expected = (math.floor(height * s), math.floor(width * s))
            # The release: torch's F.interpolate(scale_factor=s) on the (1, 3, H, W) tensor.
            tensor = torch.zeros(1, 3, height, width)
            release = F.interpolate(tensor, scale_factor=s, mode="bilinear", align_corners=True)
            assert tuple(release.shape[2:]) == expected
            assert scale.apply(image, scale=s).shape == (*expected, 3)
            assert scale.apply_to_mask(image[..., 0], scale=s).shape == expected


def test_random_scale_keeps_image_bilinear_and_label_nearest():
    scale = RandomScaleFactor([1.0])
    image = np.array([[0, 100], [200, 40]], dtype=np.uint8)
    label = np.array([[1, 2], [3, 255]], dtype=np.uint8)
    assert np.array_equal(scale.apply_to_mask(label, scale=2.0), np.kron(label, np.ones((2, 2), dtype=np.uint8)))
    upscaled = scale.apply(image[..., None].repeat(3, axis=2), scale=2.0)[..., 0]
    # Half-pixel centres: output (1, 1) samples (0.25, 0.25): .5625*0 + .1875*100 + .1875*200 + .0625*40
    assert (upscaled[0, 0], upscaled[0, 1], upscaled[1, 1], upscaled[3, 3]) == (0, 25, 59, 40)


@pytest.mark.parametrize("ignore_index", [255, 254])
def test_reduce_zero_label_uses_the_configured_ignore_index(tmp_path, ignore_index):
    write_tiny_voc(tmp_path, ids=("2008_000002",), size=(2, 3))
    label = np.array([[0, 1, 59], [ignore_index, 5, 0]], dtype=np.uint8)
    save_label_png(label, tmp_path / "SegmentationClass" / "2008_000002.png")
    dataset = SegmentationDataset(
        tmp_path, "val", CONTEXT59_CLASSES, reduce_zero_label=True, ignore_index=ignore_index
    )
    expected = np.array([[ignore_index, 0, 58], [ignore_index, 4, ignore_index]], dtype=np.uint8)
    assert np.array_equal(dataset.load(0)[1], expected)
    assert torch.equal(dataset[0]["label"], torch.from_numpy(expected).long())


def test_per_sample_seeds_draw_scale_crop_and_flip_independently():
    # Grey level = row (image) and label = column: a sample shows where it was cropped and
    # whether it was flipped. With per-transform generators started from one seed, the flip
    # followed the crop position and the scale (scales >= 1.5 were never flipped).
    rows, columns = np.mgrid[0:200, 0:200]
    image = np.repeat(rows.astype(np.uint8)[..., None], 3, axis=2)
    label = columns.astype(np.uint8)
    transform = train_transform(crop_size=100, scales=[0.5, 1.0, 1.5, 2.0])
    flipped, large, low = [], [], []
    for seed in range(400):
        seed_transform(transform, seed)
        out = transform(image=image, mask=label)
        crop = out["mask"].numpy().astype(np.int64)
        flipped.append(crop[0, 0] > crop[0, 99])  # columns run right to left
        columns_seen = crop[0][crop[0] != 255]
        large.append(len(columns_seen) / (np.ptp(columns_seen) + 1) >= 1.4)  # scale 1.5 or 2.0
        low.append(out["image"][0, 0, 0].item())  # the grey level of the crop's first row
    flipped, large, low = np.array(flipped), np.array(large), np.array(low)
    low = low < np.median(low)  # crops starting in the upper half of the positions drawn
    assert 0.4 < flipped.mean() < 0.6
    for subset in (large, ~large, low, ~low):
        assert subset.sum() > 50 and 0.35 < flipped[subset].mean() < 0.65
    seed_transform(transform, 7)
    first = transform(image=image, mask=label)
    seed_transform(transform, 7)
    assert torch.equal(transform(image=image, mask=label)["mask"], first["mask"])  # a seed fixes the sample
