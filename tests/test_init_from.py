"""Fine-tuning from a trained model (model.init_from): the tensors that fit are loaded and the
others start fresh, in one line; a checkpoint of another backbone, a damaged or a missing one is
refused in one line; the run starts at iteration 0 with a fresh optimizer, and a killed
fine-tuning run resumes bit-identically without loading init_from again."""

import copy
import functools
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import TINY, assert_same_weights, compose_config, copy_checkpoints
from omegaconf import DictConfig, OmegaConf

from emanet.engine import train as train_module
from emanet.engine.checkpoint import load_checkpoint, load_init_weights, load_model_weights, save_checkpoint
from emanet.engine.distributed import World
from emanet.engine.segmenter import load_trained_model
from emanet.engine.train import config_changes, init_from_not_applied, train
from emanet.errors import CheckpointError, CheckpointMismatchError
from emanet.models.segmentor import build_model

CLASSIFIERS = ["head.classifier.weight", "head.classifier.bias"]
AUX_CLASSIFIERS = ["aux_head.classifier.weight", "aux_head.classifier.bias"]
# The demo data's labels are 0-4: a sixth class fits them, as a dataset of one's own would.
SIX_CLASSES = ["dataset.num_classes=6", "dataset.class_names=[a,b,c,d,e,f]"]


@functools.cache
def demo_config() -> DictConfig:
    return compose_config([])


def config_with(**settings: object) -> DictConfig:
    """The demo's config with ``settings`` (``model__backbone__depth=34``: model.backbone.depth):
    a copy of one composed config, since composing takes 0.2 s and the fast tests need a dozen."""
    cfg = copy.deepcopy(demo_config())
    for key, value in settings.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def trained_checkpoint(path: Path, cfg: DictConfig, seed: int = 1, records_config: bool = True) -> Path:
    """A checkpoint of the model of ``cfg`` built from ``seed`` (weights other than a fresh
    seed-0 model's), recording its resolved config as training does, or only the experiment's
    name (``records_config=False``, as a checkpoint of an earlier version)."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    config = OmegaConf.to_container(cfg, resolve=True) if records_config else {"name": cfg.name}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "iteration": 7, "config": config}, path)
    return path


def fresh_model(cfg, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)


def test_tensors_that_fit_are_loaded_and_the_classifiers_keep_their_fresh_initialisation(tmp_path, caplog):
    run = tmp_path / "run"  # a run directory: its checkpoints/last.pt
    trained_checkpoint(run / "checkpoints" / "last.pt", config_with(model__aux__weight=0.4))
    cfg = config_with(model__aux__weight=0.4, dataset__num_classes=3, dataset__class_names=["a", "b", "c"],
                      model__init_from=str(run))
    model, untouched = fresh_model(cfg), fresh_model(cfg).state_dict()
    with caplog.at_level(logging.INFO, logger="emanet.engine.checkpoint"):
        new = load_init_weights(model, cfg.model.init_from, cfg)
    assert new == CLASSIFIERS + AUX_CLASSIFIERS
    trained, loaded = load_checkpoint(run)["model"], model.state_dict()
    for name, tensor in loaded.items():
        assert torch.equal(tensor, untouched[name] if name in new else trained[name]), name
    convolutions = [name for name, tensor in loaded.items() if tensor.dim() == 4 and name not in new]
    assert not any(torch.equal(loaded[name], untouched[name]) for name in convolutions)  # not fresh ones
    total = len(loaded)
    assert [record.getMessage() for record in caplog.records] == [
        f"init_from {run}: {total - 4} of {total} tensors loaded; new: head.classifier.weight, head.classifier.bias, "
        "aux_head.classifier.weight, aux_head.classifier.bias (5 -> 3 classes)"
    ]


def test_a_head_the_checkpoint_lacks_is_new_and_named_up_to_eight_tensors(tmp_path, caplog):
    path = trained_checkpoint(tmp_path / "no_aux.pt", demo_config())
    cfg = config_with(model__aux__weight=0.4)  # an auxiliary head the checkpoint was trained without
    model = fresh_model(cfg)
    with caplog.at_level(logging.INFO, logger="emanet.engine.checkpoint"):
        new = load_init_weights(model, path, cfg)
    assert new == [name for name in model.state_dict() if name.startswith("aux_head.")]
    total = len(model.state_dict())
    assert caplog.records[-1].getMessage() == (  # the same classes: no class counts
        f"init_from {path}: {total - 8} of {total} tensors loaded; new: aux_head.conv.0.weight, "
        "aux_head.conv.1.weight, aux_head.conv.1.bias, aux_head.conv.1.running_mean, aux_head.conv.1.running_var, "
        "aux_head.conv.1.num_batches_tracked, aux_head.classifier.weight, aux_head.classifier.bias"
    )
    classes = config_with(model__aux__weight=0.4, dataset__num_classes=3, dataset__class_names=["a", "b", "c"])
    with caplog.at_level(logging.INFO, logger="emanet.engine.checkpoint"):
        load_init_weights(fresh_model(classes), path, classes)
    assert caplog.records[-1].getMessage().endswith(
        "aux_head.conv.1.num_batches_tracked and 2 more (5 -> 3 classes)"
    )


@pytest.mark.parametrize(("trained_with", "named"), [
    # Every tensor of a ResNet-18 is also a ResNet-34's: refused for the ones it has besides.
    ({"model__backbone__depth": 34, "model__backbone__multi_grid": [1, 2, 4]},
     "model.backbone.depth=34 (configured: 18)"),
    ({"model__backbone__stem": "torchvision"}, "model.backbone.stem=torchvision (configured: deep)"),
    ({"model__backbone__width": 8}, "model.backbone.width=8 (configured: 16)"),
])
def test_a_checkpoint_of_another_backbone_is_refused_naming_the_file_and_the_settings(tmp_path, trained_with, named):
    path = trained_checkpoint(tmp_path / "other.pt", config_with(**trained_with))
    cfg = config_with(model__init_from=str(path))
    model = fresh_model(cfg)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(CheckpointError) as raised:
        load_init_weights(model, path, cfg)
    message = str(raised.value)
    backbone = sum(name.startswith("backbone.") for name in before)
    assert message.startswith(
        f"{path} does not fit the configured backbone (model.init_from): "
    ), message
    assert f" of the {backbone} backbone tensors match by name and shape" in message
    assert message.endswith(f"; it was trained with {named}: pass those on the command line")
    assert "\n" not in message
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())  # nothing loaded


def test_another_backbone_without_recorded_settings_is_told_the_configured_one(tmp_path):
    path = trained_checkpoint(tmp_path / "imported.pt", config_with(model__backbone__stem="torchvision"),
                              records_config=False)
    cfg = demo_config()
    with pytest.raises(CheckpointMismatchError, match=r"; give model.init_from a checkpoint of the configured backbone "
                                                      r"\(model.backbone.depth=18 model.backbone.stem=deep "
                                                      r"model.backbone.width=16\)$"):
        load_init_weights(fresh_model(cfg), path, cfg)


def test_a_file_without_weights_a_damaged_one_and_a_missing_path_are_refused_in_one_line(tmp_path):
    cfg = demo_config()
    model = fresh_model(cfg)
    save_checkpoint({"iteration": 3}, tmp_path / "no_model.pt")
    with pytest.raises(CheckpointError, match=r"no_model.pt holds no 'model' entry; is it a checkpoint of this"):
        load_init_weights(model, tmp_path / "no_model.pt", cfg)
    damaged = trained_checkpoint(tmp_path / "damaged.pt", cfg)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"^checkpoint {damaged} is damaged: its SHA-256 digest is "):
        load_init_weights(model, damaged, cfg)
    missing = tmp_path / "moved_away"
    with pytest.raises(CheckpointError) as raised:
        load_init_weights(model, missing, cfg)
    assert str(raised.value) == (
        f"checkpoint not found at {missing}: pass model.init_from=PATH to a .pt file or a run directory with "
        "checkpoints/last.pt"
    )


def test_evaluation_never_reads_init_from_and_a_mismatch_never_names_it(tmp_path):
    path = trained_checkpoint(tmp_path / "last.pt", config_with(model__ema__num_bases=8, model__init_from="runs/a"))
    # The path need not exist at compose time (a run on another machine), nor for evaluation.
    evaluate = compose_config([f"checkpoint={path}", "model.ema.num_bases=8", f"model.init_from={tmp_path / 'b'}"],
                              "evaluate")
    load_trained_model(evaluate, torch.device("cpu"))
    other = config_with(model__init_from=str(tmp_path / "b"))
    with pytest.raises(CheckpointMismatchError) as raised:
        load_model_weights(fresh_model(other), load_checkpoint(path), path, other)
    assert "model.ema.num_bases=8" in str(raised.value)
    assert "init_from" not in str(raised.value) + raised.value.details


def test_resuming_with_another_init_from_is_no_change_of_settings_and_is_said_once():
    saved = OmegaConf.to_container(config_with(model__init_from="runs/voc512"), resolve=True)
    current = OmegaConf.to_container(config_with(model__init_from="runs/coco"), resolve=True)
    assert config_changes(saved, current) == []  # no warning: the checkpoint's weights are the ones resumed
    checkpoint = Path("runs/shapes/checkpoints/iter_0000002.pt")
    assert init_from_not_applied("runs/coco", checkpoint, {"config": saved}) == (
        f"model.init_from=runs/coco not applied: resuming from the run's checkpoint {checkpoint} "
        "(the run started with model.init_from=runs/voc512)"
    )
    assert init_from_not_applied("runs/voc512", checkpoint, {"config": saved}) == (
        f"model.init_from=runs/voc512 not applied: resuming from the run's checkpoint {checkpoint}"
    )


def test_imagenet_weights_are_not_loaded_and_a_run_with_a_checkpoint_does_not_load_init_from(tmp_path, caplog):
    path = trained_checkpoint(tmp_path / "trained.pt", demo_config())
    # A file that is not there: loading it would fail (torchvision's would be downloaded).
    cfg = config_with(model__backbone__pretrained=str(tmp_path / "imagenet.pth"), model__init_from=str(path))
    model = train_module.build_training_model(cfg, 4, World())
    fresh = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    checkpoint = tmp_path / "checkpoints" / "iter_0000002.pt"
    with caplog.at_level(logging.INFO, logger="emanet.engine"):
        train_module.start_from_init_weights(model, cfg, (checkpoint, {"config": {}}), World())
        assert all(torch.equal(tensor, fresh[name]) for name, tensor in model.state_dict().items())
        train_module.start_from_init_weights(model, cfg, (None, None), World())
    assert [record.getMessage() for record in caplog.records] == [
        f"model.init_from={path} not applied: resuming from the run's checkpoint {checkpoint}",
        f"init_from {path}: {len(fresh)} of {len(fresh)} tensors loaded",
        f"model.backbone.pretrained={tmp_path / 'imagenet.pth'} not loaded: model.init_from gives the backbone its "
        "weights",
    ]


@contextmanager
def logged_lines() -> Iterator[list[str]]:
    """The messages the project logs at INFO and above meanwhile (caplog is one test's; a
    module's fixture trains for several)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger, handler = logging.getLogger("emanet"), Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def fine_tuning(data_root: Path, full_run: Path) -> list[str]:
    """The demo fine-tuned from full_run to a sixth class, for 4 iterations."""
    return [*TINY, f"data_root={data_root}", "schedule.iterations=4", *SIX_CLASSES, f"model.init_from={full_run}"]


@pytest.fixture(scope="module")
def fine_tuned(full_run, data_root, tmp_path_factory) -> tuple[Path, list[str]]:
    """The run directory of :func:`fine_tuning`, uninterrupted, and the lines it logged."""
    run_dir = tmp_path_factory.mktemp("fine_tuned")
    with logged_lines() as lines:
        train(compose_config(fine_tuning(data_root, full_run)), run_dir)
    return run_dir, lines


@pytest.mark.slow
def test_a_fine_tuning_run_starts_at_iteration_zero_from_the_weights_with_a_fresh_optimizer(
    fine_tuned, full_run, data_root, tmp_path, monkeypatch
):
    run_dir, lines = fine_tuned
    total = len(load_checkpoint(full_run)["model"])
    assert [line for line in lines if line.startswith("init_from")] == [
        f"init_from {full_run}: {total - 2} of {total} tensors loaded; new: head.classifier.weight, "
        "head.classifier.bias (5 -> 6 classes)"
    ]
    assert not [line for line in lines if "resuming" in line]
    assert any(line.startswith("training demo for 4 iterations") for line in lines)
    assert json.loads((run_dir / "metrics.json").read_text())["iteration"] == 4
    assert OmegaConf.load(run_dir / "config.yaml").model.init_from == str(full_run)
    assert load_checkpoint(run_dir / "checkpoints" / "iter_0000002.pt")["scheduler"]["last_epoch"] == 2  # fresh

    # The same training without init_from, its matching weights loaded by hand before the first
    # step: the same weights after 4 steps, so the optimizer, schedule, RNG and data order started afresh.
    trained = load_checkpoint(full_run)["model"]
    build = train_module.build_training_model

    def built_and_loaded_by_hand(cfg, micro_batch, world):
        model = build(cfg, micro_batch, world)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in trained.items() if k in own and own[k].shape == v.shape}, strict=False)
        return model

    monkeypatch.setattr(train_module, "build_training_model", built_and_loaded_by_hand)
    reference = [override for override in fine_tuning(data_root, full_run) if not override.startswith("model.init")]
    train(compose_config(reference), tmp_path)
    assert_same_weights(load_checkpoint(tmp_path), load_checkpoint(run_dir))


@pytest.mark.slow
@pytest.mark.parametrize("init_from", ["the same", "another"])
def test_a_killed_fine_tuning_run_resumes_bit_identically_without_init_from(
    fine_tuned, full_run, data_root, tmp_path, init_from
):
    run_dir, _ = fine_tuned
    copy_checkpoints(run_dir, tmp_path, [2])  # what a kill after iteration 2 leaves
    overrides = fine_tuning(data_root, full_run)
    moved = tmp_path / "moved_away"  # never read: the run's checkpoint holds the weights
    if init_from == "another":
        overrides = [*overrides, f"model.init_from={moved}"]
    with logged_lines() as lines:
        train(compose_config(overrides), tmp_path)
    resumed_from = tmp_path / "checkpoints" / "iter_0000002.pt"
    said = f"model.init_from={full_run} not applied: resuming from the run's checkpoint {resumed_from}"
    if init_from == "another":
        said = (f"model.init_from={moved} not applied: resuming from the run's checkpoint {resumed_from} "
                f"(the run started with model.init_from={full_run})")
    assert said in lines
    assert not [line for line in lines if line.startswith("init_from") or "setting(s) other than" in line]
    resumed = load_checkpoint(tmp_path)
    assert resumed["iteration"] == 4
    assert_same_weights(resumed, load_checkpoint(run_dir))


@pytest.mark.slow
def test_a_missing_init_from_stops_the_run_at_its_start_naming_it(data_root, tmp_path):
    missing = tmp_path / "not_copied_here"
    with pytest.raises(CheckpointError, match=rf"^checkpoint not found at {missing}: pass model.init_from=PATH"):
        train(compose_config([*TINY, f"data_root={data_root}", f"model.init_from={missing}"]), tmp_path / "run")
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))
