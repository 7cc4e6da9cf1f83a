"""A checkpoint that does not fit the model: the cause and the fix first, the keys summarised."""

import re

import pytest
from torch import nn

from emanet.engine.checkpoint import load_model_weights
from emanet.errors import CheckpointMismatchError


def test_another_architecture_is_explained_cause_first_in_a_few_hundred_characters(tmp_path):
    # The shape of a demo checkpoint evaluated as voc_emanet512: hundreds of keys the model
    # does not have, hundreds it misses, and tensors of other sizes.
    trained = nn.ModuleDict({f"demo_block_{i}": nn.Linear(4, 4) for i in range(300)} | {"head": nn.Linear(4, 4)})
    configured = nn.ModuleDict({f"voc_block_{i}": nn.Linear(4, 4) for i in range(400)} | {"head": nn.Linear(4, 8)})
    checkpoint = {"model": trained.state_dict(), "config": {"name": "demo"}}
    path = tmp_path / "last.pt"
    with pytest.raises(CheckpointMismatchError) as raised:
        load_model_weights(configured, checkpoint, path)
    message = str(raised.value)
    assert message.startswith(
        f"{path} was trained with experiment=demo and does not fit the configured model: pass experiment=demo"
    )
    assert len(message) < 600, message
    assert "800 missing keys (voc_block_0.weight, voc_block_0.bias, voc_block_1.weight, ...)" in message
    assert "600 unexpected keys (demo_block_0.weight, demo_block_0.bias, demo_block_1.weight, ...)" in message
    assert "size mismatch for head.weight: copying a param with shape torch.Size([4, 4]) from checkpoint" in message
    assert "; and 1 more" in message  # head.bias
    assert "voc_block_399.bias" not in message
    for key in ["voc_block_399.bias", "demo_block_299.bias", "size mismatch for head.bias"]:
        assert key in raised.value.details  # for the run's log file


def test_without_the_experiment_it_was_trained_with_the_fix_still_comes_first(tmp_path):
    checkpoint = {"model": nn.Linear(4, 4).state_dict()}
    with pytest.raises(CheckpointMismatchError, match=r"^\S+ does not fit the configured model: pass the experiment "
                                                      r"the checkpoint was trained with\. Differences: 2 missing keys"):
        load_model_weights(nn.Sequential(nn.Linear(4, 4)), checkpoint, tmp_path / "a.pt")


def trained_checkpoint(path, overrides, name=None):
    """A checkpoint of the demo model built with ``overrides``, recording its resolved training
    config as training does (``name``: another experiment's)."""
    from omegaconf import OmegaConf

    from emanet.cli import compose_config
    from emanet.engine.checkpoint import save_checkpoint
    from emanet.models.segmentor import build_model

    cfg = compose_config("train", overrides)
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    config = OmegaConf.to_container(cfg, resolve=True)
    save_checkpoint({"model": model.state_dict(), "config": {**config, "name": name or config["name"]}}, path)
    return path


def load_with(path, overrides):
    """evaluate.py's loading of ``path`` under ``overrides``."""
    import torch

    from emanet.cli import compose_config
    from emanet.engine.segmenter import load_trained_model

    return load_trained_model(compose_config("evaluate", [f"checkpoint={path}", *overrides]), torch.device("cpu"))


@pytest.mark.slow
def test_a_checkpoint_of_the_configured_experiment_names_the_settings_it_was_trained_with(tmp_path):
    path = trained_checkpoint(tmp_path / "last.pt", ["model.ema.channels=32", "model.ema.num_bases=8"])
    # model.ema.eval_stages differs too, but changes no tensor: not the cause, not named.
    with pytest.raises(CheckpointMismatchError) as raised:
        load_with(path, ["model.ema.eval_stages=5"])
    assert str(raised.value).startswith(
        f"{path} does not fit the configured model: it was trained with model.ema.channels=32, "
        "model.ema.num_bases=8 (configured: 64, 16): pass those on the command line. Differences: "
    )
    assert "experiment=" not in str(raised.value)  # experiment=demo is the configured one already
    assert raised.value.details.startswith(
        "trained with model.ema.channels=32, configured 64\ntrained with model.ema.num_bases=8, configured 16\n"
    )
    load_with(path, ["model.ema.eval_stages=5", "model.ema.channels=32", "model.ema.num_bases=8"])  # the fix fits


@pytest.mark.slow
def test_the_number_of_classes_and_list_settings_are_named_as_the_command_line_takes_them(tmp_path):
    overrides = ["dataset.num_classes=7", "dataset.class_names=[a,b,c,d,e,f,g]", "model.backbone.depth=34",
                 "model.backbone.multi_grid=[1,2,4]"]
    path = trained_checkpoint(tmp_path / "last.pt", overrides)
    # The settings that shape tensors first; multi_grid (dilations) goes with the depth.
    with pytest.raises(CheckpointMismatchError, match=re.escape(
        f"{path} does not fit the configured model: it was trained with model.backbone.depth=34, "
        "dataset.num_classes=7, model.backbone.multi_grid=[1,2,4] (configured: 18, 5, [1,2]): pass those on the "
        "command line. Differences: "
    )):
        load_with(path, [])
    load_with(path, overrides)


def test_another_experiment_is_the_fix_with_the_settings_it_was_trained_with_in_brackets(tmp_path):
    path = trained_checkpoint(tmp_path / "last.pt", [
        "model.backbone.width=8", "model.ema.channels=32", "model.ema.num_bases=8", "model.mid_channels=32",
        "dataset.num_classes=3", "dataset.class_names=[a,b,c]",
    ], name="shapes_small")
    with pytest.raises(CheckpointMismatchError) as raised:
        load_with(path, [])
    message = str(raised.value)
    assert message.startswith(
        f"{path} was trained with experiment=shapes_small and does not fit the configured model: pass "
        "experiment=shapes_small (it was trained with model.backbone.width=8, model.mid_channels=32, "
        "model.ema.channels=32, model.ema.num_bases=8 and 1 more; configured: 16, 64, 64, 16, ...). Differences: "
    )
    assert len(message) < 700, message
    assert "trained with dataset.num_classes=3, configured 5" in raised.value.details  # the one not shown


def test_a_checkpoint_that_records_the_configured_experiment_only_is_not_told_to_pass_it(tmp_path):
    from emanet.cli import compose_config

    configured = compose_config("evaluate", [f"checkpoint={tmp_path / 'a.pt'}"])
    checkpoint = {"model": nn.Linear(4, 4).state_dict(), "config": {"name": configured.name}}
    with pytest.raises(CheckpointMismatchError) as raised:
        load_model_weights(nn.Sequential(nn.Linear(4, 4)), checkpoint, tmp_path / "a.pt", configured)
    assert str(raised.value).startswith(
        f"{tmp_path / 'a.pt'} was trained with experiment=demo, as configured, and does not fit the configured "
        "model: pass the model.* settings it was trained with (the checkpoint does not record them). Differences: "
    )


@pytest.mark.slow
def test_resuming_with_other_model_settings_names_them(full_run, data_root, tmp_path):
    from helpers import TINY, compose_config, copy_checkpoints

    from emanet.engine.train import train

    copy_checkpoints(full_run, tmp_path, [6])
    with pytest.raises(CheckpointMismatchError, match=re.escape(
        "does not fit the configured model: it was trained with model.ema.num_bases=16 (configured: 8): "
        "pass those on the command line. Differences: "
    )):
        train(compose_config([*TINY, f"data_root={data_root}", "model.ema.num_bases=8"]), tmp_path)


# A value other than the demo's for each of SETTINGS_WITHOUT_TENSORS.
OTHER_VALUES = {
    "model.backbone.output_stride": 16, "model.backbone.multi_grid": "[1,1]", "model.bn_momentum": 0.5,
    "model.align_corners": "false", "model.dropout": 0.0, "model.ema.train_stages": 1, "model.ema.momentum": 0.5,
    "model.ema.lambda_": 2.0, "model.ema.normalize_bases": "false", "model.ema.maintenance": "none",
}


@pytest.mark.slow
def test_the_settings_said_to_change_no_tensor_change_none():
    from emanet.cli import compose_config
    from emanet.engine.checkpoint import SETTINGS_WITHOUT_TENSORS
    from emanet.models.segmentor import build_model

    def shapes(overrides):
        cfg = compose_config("train", overrides)
        model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
        return {name: tensor.shape for name, tensor in model.state_dict().items()}

    assert set(OTHER_VALUES) == SETTINGS_WITHOUT_TENSORS
    demo = shapes([])
    for key, value in OTHER_VALUES.items():
        assert shapes([f"{key}={value}"]) == demo, key
