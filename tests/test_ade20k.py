"""ADE20K (SceneParsing): the dataset config, the reduce-zero-label mapping through the
dataset reader, and the split-list preparation, on a miniature ADEChallengeData2016 tree."""

import numpy as np
import pytest
from helpers import folder_is_locked, run_cli
from PIL import Image

from emanet.cli import compose_config
from emanet.config_checks import config_problems
from emanet.data import ade20k, build_dataset, dataset_class_names
from emanet.data.ade20k import prepare_ade20k
from emanet.data.classes import ADE20K_CLASSES
from emanet.errors import DatasetError, DatasetNotFoundError

SIZE = (6, 8)  # height, width
# Raw annotation values (0 = other, 1-150 the classes) and what the reader gives.
RAW = np.array([[0, 1, 2, 150, 149, 75, 0, 1]] * SIZE[0], dtype=np.uint8)
MAPPED = np.array([[255, 0, 1, 149, 148, 74, 255, 0]] * SIZE[0], dtype=np.uint8)


def write_sample(root, folder, name, label=RAW, image_size=SIZE):
    image, annotation = root / "images" / folder / f"{name}.jpg", root / "annotations" / folder / f"{name}.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    annotation.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(name)).integers(0, 256, (*image_size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image, quality=95)
    Image.fromarray(label).save(annotation)  # grayscale ("L") PNG, as in the release


@pytest.fixture
def ade(tmp_path):
    """data_root with ADEChallengeData2016/: two training images, one validation image."""
    root = tmp_path / "ADEChallengeData2016"
    write_sample(root, "training", "ADE_train_00000001")
    write_sample(root, "training", "ADE_train_00000002", label=np.full(SIZE, 150, np.uint8))
    write_sample(root, "validation", "ADE_val_00000001", label=np.zeros(SIZE, np.uint8) + 7)
    return tmp_path, root


def ade_config(data_root, *overrides):
    return compose_config("train", ["dataset=ade20k", f"data_root={data_root}", *overrides])


def test_150_class_names_in_the_official_order_in_the_module_and_the_config(tmp_path):
    assert len(ADE20K_CLASSES) == 150 == len(set(ADE20K_CLASSES))
    assert ADE20K_CLASSES[:8] == ("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed")
    assert ADE20K_CLASSES[44] == "chest of drawers" and ADE20K_CLASSES[89] == "television receiver"
    assert ADE20K_CLASSES[-6:] == ("bulletin board", "shower", "radiator", "glass", "clock", "flag")
    cfg = ade_config(tmp_path).dataset
    assert dataset_class_names(cfg) == ADE20K_CLASSES
    assert (cfg.num_classes, cfg.reduce_zero_label, cfg.train_split, cfg.val_split) == (
        150, True, "training", "validation"
    )
    assert cfg.root == str(tmp_path / "ADEChallengeData2016")


def test_preparation_writes_split_lists_and_the_reader_ignores_other_and_shifts_the_classes(ade):
    data_root, root = ade
    assert prepare_ade20k(root) == {"training": 2, "validation": 1}
    assert (root / "training.txt").read_text() == "training/ADE_train_00000001\ntraining/ADE_train_00000002\n"
    assert (root / "validation.txt").read_text() == "validation/ADE_val_00000001\n"
    cfg = ade_config(data_root).dataset
    training = build_dataset(cfg, cfg.train_split)
    assert training.image_path(0) == root / "images" / "training" / "ADE_train_00000001.jpg"
    assert training.label_path(0) == root / "annotations" / "training" / "ADE_train_00000001.png"
    image, label = training.load(0)
    assert image.shape == (*SIZE, 3)
    np.testing.assert_array_equal(label, MAPPED)  # 0 -> 255, 1 -> 0, 150 -> 149
    assert (training.load(1)[1] == 149).all()
    validation = build_dataset(cfg, cfg.val_split)
    assert validation[0]["id"] == "validation/ADE_val_00000001" and (validation[0]["label"] == 6).all()


def test_an_image_without_its_annotation_is_refused_naming_it_and_no_list_is_written(ade):
    _, root = ade
    (root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(DatasetError) as error:
        prepare_ade20k(root)
    message = str(error.value)
    assert "\n" not in message and "ADE_train_00000002" in message
    assert str(root / "annotations" / "training") in message and "ADEChallengeData2016.zip" in message
    assert not (root / "training.txt").exists() and not (root / "validation.txt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_value_above_150_is_refused_naming_the_file(ade, workers):
    _, root = ade
    label = RAW.copy()
    label[0, 0] = 151
    write_sample(root, "validation", "ADE_val_00000002", label=label)
    with pytest.raises(DatasetError) as error:
        prepare_ade20k(root, workers=workers)
    message = str(error.value)
    assert "\n" not in message.strip()
    assert f"{root / 'annotations' / 'validation' / 'ADE_val_00000002.png'}: values [151] are outside 0-150" in message
    assert not (root / "validation.txt").exists()


def test_an_annotation_of_another_size_is_refused(ade):
    _, root = ade
    write_sample(root, "training", "ADE_train_00000003", label=np.ones((SIZE[0], SIZE[1] + 1), np.uint8))
    with pytest.raises(DatasetError, match=r"ADE_train_00000003.png: annotation is 9x6 but its image "
                                           r"ADE_train_00000003.jpg is 8x6"):
        prepare_ade20k(root)


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="ADE20K not found at"):
        prepare_ade20k(tmp_path / "ADEChallengeData2016")
    write_sample(tmp_path / "ADEChallengeData2016", "training", "ADE_train_00000001")
    with pytest.raises(DatasetNotFoundError, match="images not found at .*images/validation"):
        prepare_ade20k(tmp_path / "ADEChallengeData2016")


def test_a_rerun_checks_only_what_no_list_holds_and_writes_the_same_lists(ade, monkeypatch):
    _, root = ade
    checked = []
    check_annotations = ade20k.check_annotations

    def recording(root_, ids, description, workers=1):
        checked.append(list(ids))
        return check_annotations(root_, ids, description, workers)

    monkeypatch.setattr(ade20k, "check_annotations", recording)
    prepare_ade20k(root)
    lists = {name: (root / name).read_bytes() for name in ("training.txt", "validation.txt")}
    assert checked == [["training/ADE_train_00000001", "training/ADE_train_00000002"], ["validation/ADE_val_00000001"]]
    checked.clear()
    assert prepare_ade20k(root) == {"training": 2, "validation": 1}  # idempotent
    assert checked == [[], []]
    assert {name: (root / name).read_bytes() for name in lists} == lists
    # Interrupted while checking validation: training's list stands, validation resumes.
    (root / "validation.txt").unlink()
    write_sample(root, "training", "ADE_train_00000003")
    checked.clear()

    def interrupted(root_, ids, description, workers=1):
        checked.append(list(ids))
        if "validation" in description:
            raise KeyboardInterrupt

    monkeypatch.setattr(ade20k, "check_annotations", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_ade20k(root)
    assert checked == [["training/ADE_train_00000003"], ["validation/ADE_val_00000001"]]
    assert "training/ADE_train_00000003" in (root / "training.txt").read_text()
    assert not (root / "validation.txt").exists() and not list(root.glob(".*.tmp"))
    checked.clear()
    monkeypatch.setattr(ade20k, "check_annotations", recording)
    assert prepare_ade20k(root) == {"training": 3, "validation": 1}
    assert checked == [[], ["validation/ADE_val_00000001"]]


def test_the_check_runs_under_the_lock_on_the_dataset_folder(ade, monkeypatch):
    _, root = ade
    held = []

    def probing(*args, **kwargs):
        held.append(folder_is_locked(root))

    monkeypatch.setattr(ade20k, "check_annotations", probing)
    prepare_ade20k(root)
    assert held == [True, True]


def test_command_line_counts_against_the_published_sizes_and_reports_bad_files_in_one_line(ade, monkeypatch, capsys):
    data_root, root = ade
    monkeypatch.setenv("EMANET_DATA_ROOT", str(data_root))
    status, err = run_cli(monkeypatch, capsys, "ade20k", "--workers", "1")
    assert status == 1
    assert [line for line in err.splitlines() if line.startswith("error")] == [
        "error: ade20k training: 2 images, but the published split has 20210; ade20k validation: 1 images, but "
        "the published split has 2000. Check that every archive of data/README.md is unpacked completely and "
        "re-run (files already written are kept), or pass --allow-partial for a deliberately partial copy"
    ]
    assert (root / "training.txt").is_file()
    assert run_cli(monkeypatch, capsys, "ade20k", "--allow-partial", "--workers", "1")[0] == 0
    label = RAW.copy()
    label[1, 1] = 200
    write_sample(root, "training", "ADE_train_00000009", label=label)
    status, err = run_cli(monkeypatch, capsys, "--allow-partial", "ade20k", "--root", str(root), "--workers", "1")
    assert status == 2
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "ADE_train_00000009.png: values [200] are outside 0-150" in errors[0]


def test_the_experiment_is_the_voc_recipe_with_the_ade20k_schedule(tmp_path):
    cfg = compose_config("train", ["experiment=ade20k_emanet512", f"data_root={tmp_path}"])
    voc = compose_config("train", ["experiment=voc_emanet512", f"data_root={tmp_path}"])
    assert config_problems(cfg) == []
    assert (cfg.name, cfg.dataset.name, cfg.model.head, cfg.model.ema.channels) == (
        "ade20k_emanet512", "ade20k", "ema", 512
    )
    assert (cfg.model.backbone.depth, cfg.model.backbone.output_stride) == (101, 8)
    assert cfg.model.backbone == voc.model.backbone  # and the same ImageNet weights
    assert (cfg.dataset.crop_size, cfg.dataset.scale_sampling, list(cfg.dataset.train_scales)) == (
        512, "continuous", [0.5, 2.0]
    )
    assert (cfg.schedule.iterations, cfg.schedule.batch_size, cfg.optim.lr) == (160000, 16, 0.01)
    assert cfg.eval == voc.eval  # the project's ms_flip preset
