"""COCO JSON exports -> the folder layout: the decoders against pycocotools, pixel for pixel,
the painting rule, the files written, re-runs, and every refusal."""

import json

import numpy as np
import pytest
from helpers import folder_is_locked
from PIL import Image
from pycocotools import mask as mask_utils  # the reference (a dev dependency)
from pycocotools.coco import COCO

from emanet.data import coco_json
from emanet.data.class_file import read_class_file
from emanet.data.coco_json import polygon_mask, prepare_coco_json, rle_mask, rle_string_counts, segmentation_mask
from emanet.errors import DatasetError, DatasetNotFoundError

# pycocotools' decode trips NumPy 2's copy-keyword deprecation: not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

WIDTH, HEIGHT = 40, 30
CATEGORIES = [{"id": 7, "name": "car"}, {"id": 3, "name": "traffic  light"}, {"id": 12, "name": "person"}]


def write_image(path, width=WIDTH, height=HEIGHT, orientation=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, exif=exif.tobytes())


def runs(mask):
    """Uncompressed COCO RLE counts of a (h, w) mask: run lengths, 0s first, column-major."""
    counts, value, run = [], 0, 0
    for pixel in mask.ravel(order="F"):
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return counts


def compressed(mask):

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def random_mask(seed, height=HEIGHT, width=WIDTH, fraction=0.3):
    return np.random.default_rng(seed).random((height, width)) < fraction


def annotation(ann_id, image_id, category_id, segmentation, area, crowd=0):
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
        "area": area, "iscrowd": crowd, "bbox": [0, 0, 1, 1],
    }


def coco_export(tmp_path):
    """(JSON path, images folder): three images, one in a sub-folder, one without annotations;
    polygons (concave, partly outside, two-part, tiny), uncompressed and compressed RLEs,
    crowds, overlaps of different areas and an area tie."""
    images = tmp_path / "export" / "images"
    write_image(images / "sub" / "a.jpg", seed=1)
    write_image(images / "b.png", seed=2)
    write_image(images / "c.jpg", seed=3)
    concave = [2, 2, 30, 2, 30, 25, 20, 25, 20, 10, 10, 10, 10, 25, 2, 25]  # a U
    outside = [-10.3, -5.2, 15.7, -3.1, 18.2, 14.6, -4.4, 20.9]
    star = [20, 0.5, 23.3, 9.1, 33, 9.4, 25.4, 15, 28.2, 24, 20, 18.5, 11.8, 24, 14.6, 15, 7, 9.4, 16.7, 9.1]
    self_touching = [5, 5, 15, 5, 10, 12, 15, 19, 5, 19, 10, 12]  # two triangles meeting at (10, 12)
    tiny = [35.1, 26.2, 35.6, 26.3, 35.4, 26.9]
    rle_a, rle_b = random_mask(10, fraction=0.5), random_mask(11, fraction=0.2)
    crowd = np.zeros((HEIGHT, WIDTH), bool)
    crowd[20:28, 25:39] = True
    data = {
        "images": [
            {"id": 1, "file_name": "sub/a.jpg", "width": WIDTH, "height": HEIGHT},
            {"id": 2, "file_name": "b.png", "width": WIDTH, "height": HEIGHT},
            {"id": 5, "file_name": "c.jpg", "width": WIDTH, "height": HEIGHT},
        ],
        "annotations": [
            annotation(100, 1, 7, [concave], 500.0),
            annotation(101, 1, 3, [outside, tiny], 200),
            annotation(102, 1, 12, [star], 200),  # ties with 101: painted after it
            annotation(103, 1, 12, [self_touching], 90.5),
            annotation(104, 1, 7, {"counts": runs(crowd), "size": [HEIGHT, WIDTH]}, 112, crowd=1),
            annotation(105, 2, 3, {"counts": runs(rle_a), "size": [HEIGHT, WIDTH]}, int(rle_a.sum())),
            annotation(106, 2, 12, compressed(rle_b), int(rle_b.sum())),
            annotation(107, 2, 7, [[0, 0, 39, 0, 39, 29, 0, 29]], 1170),  # the largest: painted first
            annotation(108, 2, 12, compressed(crowd), 112, crowd=1),
        ],
        "categories": CATEGORIES,
    }
    path = tmp_path / "export" / "instances_default.json"
    path.write_text(json.dumps(data))
    return path, images


def reference_labels(json_path, background=True):
    """image file name -> the label pycocotools' masks painted by the documented rule."""

    coco = COCO(str(json_path))
    class_of = {category["id"]: index + background for index, category in enumerate(coco.dataset["categories"])}
    labels = {}
    for image in coco.dataset["images"]:
        label = np.full((image["height"], image["width"]), 0 if background else 255, np.uint8)
        annotations = [a for a in coco.dataset["annotations"] if a["image_id"] == image["id"]]
        for ann in sorted(annotations, key=lambda a: -a["area"]):
            label[coco.annToMask(ann) == 1] = 255 if ann["iscrowd"] else class_of[ann["category_id"]]
        labels[image["file_name"].split("/")[-1]] = label
    return labels


def read_mask(path):
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)


def modify(json_path, change):
    data = json.loads(json_path.read_text())
    change(data)
    json_path.write_text(json.dumps(data))


@pytest.mark.parametrize("background", [True, False])
def test_masks_equal_pycocotools_painted_by_the_rule(tmp_path, background):
    json_path, images = coco_export(tmp_path)
    out = tmp_path / "out"
    assert prepare_coco_json(json_path, images, out, "train", background=background) == {"train": 3}
    expected_names = ["car", "traffic light", "person"]
    classes = read_class_file(out / "classes.txt")
    assert list(classes.names) == (["background", *expected_names] if background else expected_names)
    assert not classes.has_colors
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["a.jpg", "b.png", "c.jpg"]
    assert (out / "images" / "train" / "a.jpg").read_bytes() == (images / "sub" / "a.jpg").read_bytes()
    assert (out / "images" / "train" / "b.png").read_bytes() == (images / "b.png").read_bytes()
    reference = reference_labels(json_path, background)
    for name, expected in reference.items():
        found = read_mask(out / "masks" / "train" / f"{name.rsplit('.', 1)[0]}.png")
        np.testing.assert_array_equal(found, expected)
    outside = 0 if background else 255
    assert (reference["c.jpg"] == outside).all()  # no annotations: background, or ignored without it
    # Every rule shows: the smaller star (tie with 101, later in the JSON) over 101, the
    # crowd ignored, the class ids 1-3 (0-2) of the categories in JSON order.
    a = reference["a.jpg"]
    offset = 1 if background else 0
    assert set(np.unique(a)) == {outside, 255, offset, offset + 1, offset + 2}
    assert a[5, 20] == offset + 2  # the star's tip lies inside the U's bar
    assert a[22, 30] == 255  # crowd
    data = json.loads(json_path.read_text())
    outside_tiny, star, self_touching = (
        segmentation_mask(data["annotations"][i]["segmentation"], HEIGHT, WIDTH) for i in (1, 2, 3)
    )
    tie = outside_tiny & star & ~self_touching
    assert tie.any() and (a[tie] == offset + 2).all()  # equal areas: the later one in the JSON on top
    if not background:
        assert (a == 255).sum() > (reference_labels(json_path, True)["a.jpg"] == 255).sum()


def test_decoders_equal_pycocotools_on_random_polygons():

    rng = np.random.default_rng(0)
    compared = 0
    for trial in range(1200):
        height, width = (int(v) for v in rng.integers(1, 50, 2))
        size, points = max(height, width), int(rng.integers(3, 14))
        kind = trial % 6
        if kind == 0:  # anything, mostly concave and self-intersecting, partly outside
            polygon = rng.uniform(-8, size + 8, 2 * points)
        elif kind == 1:  # on the pixel grid: many ties between edges and pixel centres
            polygon = rng.integers(-3, size + 3, 2 * points).astype(float)
        elif kind == 2:  # on half pixels
            polygon = rng.integers(-6, 2 * size + 6, 2 * points) / 2
        elif kind == 3:  # tiny: under a few pixels
            polygon = rng.uniform(0, 2.5, 2 * points) + rng.uniform(-1, size)
        elif kind == 4:  # repeated vertices, and an edge back along itself (self-touching)
            polygon = np.round(rng.uniform(-2, size + 2, 2 * points), 1)
            polygon = np.concatenate([polygon, polygon[:2], polygon[:6].reshape(3, 2)[::-1].ravel()])
        else:  # far outside on one side
            polygon = rng.uniform(-3 * size, 4 * size, 2 * points)
        polygon = polygon.tolist()
        expected = mask_utils.decode(mask_utils.frPyObjects([polygon], height, width))[..., 0]
        np.testing.assert_array_equal(polygon_mask(polygon, height, width), expected.astype(bool))
        compared += 1
    # Several parts are united, as annToRLE merges them.
    for seed in range(20):
        rng = np.random.default_rng(seed)
        parts = [rng.uniform(-5, 45, 2 * int(rng.integers(3, 8))).tolist() for _ in range(3)]
        expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, HEIGHT, WIDTH)))
        np.testing.assert_array_equal(segmentation_mask(parts, HEIGHT, WIDTH), expected.astype(bool))
        compared += 1
    assert compared == 1220


def test_degenerate_polygon_parts_give_no_pixels_as_in_pycocotools():

    first = [0, 0, 9.5, 0, 0, 7.2]  # a real part first: pycocotools rasterises the others as polygons
    for part in ([1.0, 2.0, 5.0, 7.0], [3.0, 3.0, 3.0, 3.0], [1, 1, 1, 1, 1, 1], [0, 0, 10, 10, 20, 20]):
        expected = mask_utils.decode(mask_utils.frPyObjects([first, part], 12, 14)[1])
        assert expected.sum() == 0 and not polygon_mask(part, 12, 14).any()
    assert not polygon_mask([3.0, 4.0], 12, 14).any()


def test_rle_decoders_equal_pycocotools_on_random_masks():

    rng = np.random.default_rng(1)
    compared = 0
    for trial in range(200):
        height, width = (int(v) for v in rng.integers(1, 60, 2))
        mask = rng.random((height, width)) < rng.random()
        if trial % 4 == 0:  # long runs: counts of several characters, differences to the run two before
            mask = np.zeros((height, width), bool)
            mask[rng.integers(0, height):, rng.integers(0, width):] = True
        encoded = compressed(mask)
        expected = mask_utils.decode({"size": encoded["size"], "counts": encoded["counts"].encode()}).astype(bool)
        np.testing.assert_array_equal(rle_mask(rle_string_counts(encoded["counts"]), height, width), expected)
        uncompressed = {"counts": runs(mask), "size": [height, width]}
        from_counts = mask_utils.decode(mask_utils.frPyObjects(uncompressed, height, width)).astype(bool)
        np.testing.assert_array_equal(segmentation_mask(uncompressed, height, width), from_counts)
        np.testing.assert_array_equal(segmentation_mask(encoded, height, width), mask)
        compared += 2
    assert compared == 400


def test_rle_strings_and_counts_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="ends inside"):
        rle_string_counts("0`")  # "`" = 48 + 48: more groups follow
    with pytest.raises(ValueError, match="not one of"):
        rle_string_counts("0 ")
    with pytest.raises(ValueError, match="add up to 5 pixels, not height x width = 6"):
        rle_mask([2, 3], 2, 3)
    with pytest.raises(ValueError, match="negative"):
        rle_mask([8, -2], 2, 3)


def test_rerun_writes_nothing_new_and_rewrites_a_damaged_mask(tmp_path):
    json_path, images = coco_export(tmp_path)
    out = tmp_path / "out"
    prepare_coco_json(json_path, images, out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    assert prepare_coco_json(json_path, images, out) == {"train": 3}
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files  # no temp file left either
    assert {p: p.stat().st_mtime_ns for p in files} == before
    damaged, copied = out / "masks" / "train" / "a.png", out / "images" / "train" / "b.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(damaged)  # an "L" PNG of zeros
    copied.write_bytes(b"not the image")
    (out / "masks" / "train" / ".c.png.x1y2.tmp").write_bytes(b"left by a killed run")
    prepare_coco_json(json_path, images, out)
    np.testing.assert_array_equal(read_mask(damaged), reference_labels(json_path)["a.jpg"])
    assert copied.read_bytes() == (images / "b.png").read_bytes()
    assert not list(out.rglob("*.tmp"))
    unchanged = [p for p in files if p not in (damaged, copied)]
    assert {p: p.stat().st_mtime_ns for p in unchanged} == {p: before[p] for p in unchanged}


def test_second_split_needs_the_same_categories(tmp_path):
    json_path, images = coco_export(tmp_path)
    out = tmp_path / "out"
    prepare_coco_json(json_path, images, out, "train")
    assert prepare_coco_json(json_path, images, out, "val") == {"val": 3}
    other = tmp_path / "val.json"
    other.write_text(json_path.read_text().replace('"person"', '"bicycle"'))
    with pytest.raises(DatasetError, match="categories differ") as refused:
        prepare_coco_json(other, images, out, "val")
    assert str(other) in str(refused.value) and str(out / "classes.txt") in str(refused.value)
    assert "'person' there, 'bicycle' here" in str(refused.value)


def test_the_dataset_folder_is_locked_while_masks_are_written(tmp_path, monkeypatch):
    json_path, images = coco_export(tmp_path)
    out = tmp_path / "out"
    convert_labels = coco_json.convert_labels
    locked = []

    def checking(*args, **kwargs):
        locked.append(folder_is_locked(out))
        return convert_labels(*args, **kwargs)

    monkeypatch.setattr(coco_json, "convert_labels", checking)
    prepare_coco_json(json_path, images, out)
    assert locked == [True] and not folder_is_locked(out)


def test_exif_orientation_counts_for_the_size(tmp_path):
    json_path, images = coco_export(tmp_path)
    write_image(images / "b.png", width=HEIGHT, height=WIDTH, orientation=6)  # stored sideways, upright 40x30
    out = tmp_path / "out"
    assert prepare_coco_json(json_path, images, out) == {"train": 3}
    write_image(images / "c.jpg", orientation=8)  # stored 40x30: upright 30x40
    with pytest.raises(DatasetError, match=r"c\.jpg: image is 30x40 .* says 40x30"):
        prepare_coco_json(json_path, images, tmp_path / "out2")
    assert not (tmp_path / "out2" / "classes.txt").exists()  # nothing written


def test_images_without_annotations_are_all_ignored_without_background(tmp_path):
    json_path, images = coco_export(tmp_path)
    modify(json_path, lambda data: data.update(annotations=[]))
    out = tmp_path / "out"
    prepare_coco_json(json_path, images, out, background=False)
    for name in ("a", "b", "c"):
        assert (read_mask(out / "masks" / "train" / f"{name}.png") == 255).all()


@pytest.mark.slow
def test_worker_processes_write_the_same_masks(tmp_path):
    json_path, images = coco_export(tmp_path)
    prepare_coco_json(json_path, images, tmp_path / "one")
    prepare_coco_json(json_path, images, tmp_path / "two", workers=2)
    for name in ("a", "b", "c"):
        path = f"masks/train/{name}.png"
        np.testing.assert_array_equal(read_mask(tmp_path / "one" / path), read_mask(tmp_path / "two" / path))


def refuse(tmp_path, change, match, *, write=None):
    json_path, images = coco_export(tmp_path)
    if change is not None:
        modify(json_path, change)
    if write is not None:
        write(json_path, images)
    with pytest.raises(DatasetError, match=match) as refused:
        prepare_coco_json(json_path, images, tmp_path / "out")
    message = str(refused.value)
    assert "\n" not in message
    assert not (tmp_path / "out" / "classes.txt").exists()
    return message, json_path, images


def test_refuses_what_is_not_json(tmp_path):
    message, json_path, _ = refuse(tmp_path, None, "cannot read it as JSON", write=lambda p, _: p.write_text("{oops"))
    assert str(json_path) in message
    message, json_path, _ = refuse(tmp_path, None, "not a COCO JSON", write=lambda p, _: p.write_text("[1, 2]"))
    assert str(json_path) in message
    with pytest.raises(DatasetNotFoundError, match="no such COCO JSON"):
        prepare_coco_json(tmp_path / "missing.json", tmp_path, tmp_path / "out")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_refuses_a_json_without_a_list(tmp_path, key):
    message, json_path, _ = refuse(tmp_path, lambda data: data.pop(key), f"no '{key}' list")
    assert message.startswith(f"{json_path}: ")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d["annotations"][2].update(image_id=99), "annotation 102: image_id 99 is not among the images"),
        (lambda d: d["annotations"][5].update(category_id=1), "annotation 105: category_id 1 is not among"),
        (
            lambda d: d["annotations"][5]["segmentation"].update(size=[HEIGHT + 1, WIDTH]),
            r"annotation 105 \(image 2\): RLE size \[31, 40\] differs from its image's \[height, width\] = \[30, 40\]",
        ),
        (
            lambda d: d["annotations"][6]["segmentation"].update(size=[HEIGHT, WIDTH - 1]),
            r"annotation 106 \(image 2\): RLE size \[30, 39\] differs",
        ),
        (lambda d: d["annotations"][0]["segmentation"][0].append(3), "annotation 100 .*odd count of numbers"),
        (lambda d: d["annotations"][0].update(segmentation="x"), "annotation 100 .*neither a list of polygons"),
        (lambda d: d["images"].append(dict(d["images"][2], id=6, file_name="x/c.png")), "'c.jpg' and 'x/c.png'"),
        (lambda d: d["images"].append(dict(d["images"][2])), "image id 5 is listed twice"),
        (
            lambda d: d.update(categories=[{"id": i, "name": f"c{i}"} for i in range(255)]),
            "255 categories; 8-bit labels hold at most 254 besides background",
        ),
        (lambda d: d["categories"].append({"id": 1, "name": "background"}), "--no-background"),
        (lambda d: d["categories"].append({"id": 1, "name": "car"}), "the category name 'car' is given twice"),
    ],
)
def test_refuses_inconsistent_annotations_naming_the_json(tmp_path, change, match):
    message, json_path, _ = refuse(tmp_path, change, match)
    assert message.startswith(f"{json_path}: ")


def test_254_categories_fit_with_background_and_255_without(tmp_path):
    json_path, images = coco_export(tmp_path)
    more = [{"id": 100 + i, "name": f"c{i}"} for i in range(251)]
    modify(json_path, lambda d: d.update(categories=CATEGORIES + more))
    prepare_coco_json(json_path, images, tmp_path / "with")
    assert len(read_class_file(tmp_path / "with" / "classes.txt")) == 255
    modify(json_path, lambda d: d["categories"].append({"id": 99, "name": "one more"}))
    prepare_coco_json(json_path, images, tmp_path / "without", background=False)
    assert len(read_class_file(tmp_path / "without" / "classes.txt")) == 255


def test_run_lengths_that_do_not_fit_are_refused_naming_the_annotation(tmp_path):
    def longer(data):
        data["annotations"][5]["segmentation"]["counts"][-1] += 1

    refuse(tmp_path, longer, r"annotation 105 \(image 2\): RLE run lengths add up to 1201 pixels, not .* 1200")
    # A compressed string is decoded only when its mask is painted.
    json_path, images = coco_export(tmp_path / "compressed")
    modify(json_path, lambda d: d["annotations"][6]["segmentation"].update(counts="0`"))
    with pytest.raises(DatasetError, match=r"\(image 2\): annotation 106: the string ends inside") as refused:
        prepare_coco_json(json_path, images, tmp_path / "out2")
    assert str(json_path) in str(refused.value)


def test_refuses_missing_images_naming_them_before_writing(tmp_path):
    def remove(json_path, images):
        (images / "sub" / "a.jpg").unlink()
        (images / "c.jpg").unlink()

    message, json_path, images = refuse(tmp_path, None, "2 listed images are not in", write=remove)
    assert str(images / "sub" / "a.jpg") in message and str(images / "c.jpg") in message
    assert not (tmp_path / "out").exists()


def test_refuses_an_image_of_another_size_naming_it(tmp_path):
    def smaller(json_path, images):
        write_image(images / "b.png", width=WIDTH - 1)

    message, _, images = refuse(tmp_path, None, r"image is 39x30 .* says 40x30", write=smaller)
    assert message.startswith(f"{images / 'b.png'}: ")
    assert not (tmp_path / "out" / "images" / "train").exists()


def test_refuses_an_image_that_does_not_decode(tmp_path):
    message, _, images = refuse(
        tmp_path, None, "cannot read the image", write=lambda _, images: (images / "c.jpg").write_bytes(b"JFIF?")
    )
    assert message.startswith(f"{images / 'c.jpg'}: ")


def test_file_names_are_found_without_their_folders(tmp_path):
    json_path, images = coco_export(tmp_path)
    modify(json_path, lambda d: d["images"][1].update(file_name="C:\\export\\images\\b.png"))
    assert prepare_coco_json(json_path, images, tmp_path / "out") == {"train": 3}
    assert (tmp_path / "out" / "images" / "train" / "b.png").read_bytes() == (images / "b.png").read_bytes()
