"""Startup validation: every bad value refused in one line naming the key, before any work."""

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from tests_paths import REPO

from emanet.cli import compose_config, remove_unused_run_dir
from emanet.config_checks import RULES, Number, NumberList, check_config, config_problems, unchecked_keys
from emanet.errors import ConfigError

EXPERIMENTS = sorted(path.stem for path in (REPO / "configs" / "experiment").glob("*.yaml"))
MODELS = sorted(path.stem for path in (REPO / "configs" / "model").glob("*.yaml") if not path.stem.startswith("_"))
DATASETS = sorted(path.stem for path in (REPO / "configs" / "dataset").glob("*.yaml") if not path.stem.startswith("_"))


@pytest.mark.parametrize(("override", "message"), [
    # The values observed to end in tracebacks, or to be caught only after training.
    ("optim.lr=0", "optim.lr=0: expected a number > 0"),
    ("optim.lr=-0.01", "optim.lr=-0.01: expected a number > 0"),
    ("schedule.batch_size=0", "schedule.batch_size=0: expected an integer >= 1"),
    ("dataset.crop_size=0", "dataset.crop_size=0: expected an integer >= 1, or [height, width] of such integers"),
    ("eval.crop_size=[512,1024,3]", "eval.crop_size=[512,1024,3]: expected an integer >= 1, or [height, width] of "
                                    "such integers"),
    ("eval.stride=[48,70]", "eval.stride=[48,70] is larger than eval.crop_size=64: the windows would leave gaps"),
    ("model.ema.num_bases=0", "model.ema.num_bases=0: expected an integer >= 1"),
    ("model.ema.train_stages=0", "model.ema.train_stages=0: expected an integer >= 1"),
    ("model.ema.train_stages=-2", "model.ema.train_stages=-2: expected an integer >= 1"),
    ("eval.scales=[]", "eval.scales=[]: expected a non-empty list of numbers, each a number > 0"),
    ("schedule.iterations=abc", "schedule.iterations=abc: expected an integer >= 1"),
    # And a few more of the table.
    ("schedule.iterations=1.5", "schedule.iterations=1.5: expected an integer >= 1"),
    ("model.dropout=1", "model.dropout=1: expected a number >= 0 and < 1"),
    ("model.backbone.output_stride=4", "model.backbone.output_stride=4: expected one of 8, 16, 32"),
    ("dataset.std=[0.2,0.2]", "dataset.std=[0.2,0.2]: expected 3 numbers, each a number > 0"),
    ("eval.flip=maybe", "eval.flip=maybe: expected true or false"),
    ("runtime.amp=fp8", "runtime.amp=fp8: expected one of off, bf16, fp16"),
    ("runtime.device=gpu", "runtime.device=gpu: expected one of auto, cpu, cuda or cuda:N"),
    ("runtime.threads=0", "runtime.threads=0: expected an integer >= 1 or null"),
    ("eval.stride=65", "eval.stride=65 is larger than eval.crop_size=64: the windows would leave gaps"),
    ("dataset.generate.min_size=200", "dataset.generate.min_size=200 is larger than dataset.generate.max_size=80"),
])
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as raised:
        compose_config("train", [override])
    assert str(raised.value) == message


def test_every_bad_value_is_named_at_once():
    cfg = compose_config("train", [])
    cfg.optim.lr, cfg.schedule.batch_size = 0, 0
    assert config_problems(cfg) == [
        "optim.lr=0: expected a number > 0", "schedule.batch_size=0: expected an integer >= 1",
    ]


def test_values_that_follow_another_key_are_reported_under_that_key_only():
    cfg = compose_config("train", [])
    cfg.runtime.amp = "fp8"  # eval.amp follows it
    cfg.model.ema.train_stages = 0  # model.ema.eval_stages follows it
    assert config_problems(cfg) == [
        "model.ema.train_stages=0: expected an integer >= 1", "runtime.amp=fp8: expected one of off, bf16, fp16",
    ]
    cfg.runtime.amp, cfg.model.ema.train_stages, cfg.eval.amp = "off", 3, "half"
    assert config_problems(cfg) == ["eval.amp=half: expected one of off, bf16, fp16"]


@pytest.mark.parametrize("overrides", [
    *([f"experiment={experiment}"] for experiment in EXPERIMENTS),
    *(["experiment=voc_emanet512", f"model={model}"] for model in MODELS),
    *(["experiment=voc_emanet512", f"dataset={dataset}"] for dataset in DATASETS),
])
def test_every_numeric_and_boolean_key_has_a_rule_and_the_shipped_configs_pass(overrides):
    # compose_config checks the values: the shipped configs pass their own rules.
    assert unchecked_keys(compose_config("predict", [*overrides, "checkpoint=x", "input=x"])) == []


def test_the_rules_follow_the_code_they_guard():
    from emanet.engine.amp import AMP_DTYPES
    from emanet.engine.train import LOSS_NORMALIZATIONS
    from emanet.models.resnet import DEPTHS

    assert set(RULES["runtime.amp"].choices) == set(RULES["eval.amp"].choices) == set(AMP_DTYPES)
    assert RULES["loss.normalization"].choices == LOSS_NORMALIZATIONS
    assert set(RULES["model.backbone.depth"].choices) == set(DEPTHS)


def test_numbers_refuse_booleans_text_and_non_finite_values():
    positive_int = Number(integer=True, minimum=1)
    assert positive_int.allows(3) and not positive_int.allows(True) and not positive_int.allows("3")
    assert not positive_int.allows(2.0) and Number(minimum=0).allows(2)
    assert not Number(minimum=0).allows(float("inf")) and not Number(minimum=0).allows(float("nan"))
    assert NumberList(Number(above=0), length=3).allows([0.1, 0.2, 0.3])
    assert not NumberList(Number(above=0)).allows([]) and not NumberList(Number(above=0)).allows([0.5, 0])


@pytest.mark.slow
def test_a_config_problem_is_refused_before_hydra_writes_a_run_directory_to_keep(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "train.py", "schedule.iterations=abc", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "error: schedule.iterations=abc: expected an integer >= 1" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()


def test_only_a_run_directory_with_nothing_but_hydras_files_is_removed(tmp_path):
    fresh, used = tmp_path / "fresh", tmp_path / "used"
    for run_dir in (fresh, used):
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("{}")
        (run_dir / "train.log").write_text("")
    (used / "checkpoints").mkdir()
    remove_unused_run_dir(fresh)
    remove_unused_run_dir(used)
    assert not fresh.exists() and (used / "checkpoints").is_dir() and (used / "train.log").is_file()


def test_a_valid_config_passes():
    check_config(OmegaConf.create(compose_config("train", ["experiment=voc_emanet512"])))
