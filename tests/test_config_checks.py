"""Startup validation: every bad value refused in one line naming the key, before any work,
by the rules of the config schema (emanet/config_schema.py)."""

import os
import subprocess
import sys

import pytest
from helpers import folder_dataset_root
from omegaconf import OmegaConf, open_dict
from tests_paths import REPO

from emanet.cli import compose_config, remove_unused_run_dir
from emanet.config_checks import RULES, config_problems, key_table, schema_keys
from emanet.config_schema import Number, NumberList
from emanet.errors import ConfigError
from emanet.io import marked_section

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
    # The checks between keys that engine, model and data code made before the schema.
    ("model.mid_channels=null", "model.head=ema reads model.mid_channels, which is not set: select the head's own "
                                "model config (configs/model/) or pass model.mid_channels=..."),
    ("model.backbone.width=15 model.backbone.stem=v1c", "model.backbone.width=15 is odd: model.backbone.stem=v1c's "
                                                        "first two convolutions have width / 2 channels"),
    ("dataset.name=my_shapes", "dataset.name=my_shapes has no built-in class names (built in: voc_aug, "
                               "pascal_context, pascal_context59, coco_stuff10k, coco_stuff164k, cityscapes, ade20k, "
                               "demo): for a dataset of your own, list its classes in dataset.class_names"),
    ("dataset.class_names=[a,b]", "dataset.num_classes=5 but dataset.class_names lists 2 classes"),
    ("loss.normalization=mean", "loss.normalization=mean: expected one of valid, all_pixels"),
    ("eval.crops_per_pass=0", "eval.crops_per_pass=0: expected an integer >= 1"),
    ("schedule.eval_every=-1", "schedule.eval_every=-1: expected an integer >= 0"),
    ("schedule.checkpoint_every=0", "schedule.checkpoint_every=0: expected an integer >= 1"),
    ("schedule.log_every=0", "schedule.log_every=0: expected an integer >= 1"),
    ("schedule.checkpoint_keep=0", "schedule.checkpoint_keep=0: expected an integer >= 1"),
    ("eval.amp=half", "eval.amp=half: expected one of off, bf16, fp16"),
    ("dataset.num_classes=4", "dataset.num_classes=4 but dataset.name=demo has 5 classes"),
])
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as raised:
        compose_config("train", override.split())
    assert str(raised.value) == message


def test_predict_refuses_a_run_that_would_write_nothing():
    with pytest.raises(ConfigError, match="^eval.save_predictions and eval.save_overlays are both false: nothing "
                                          "would be written$"):
        compose_config("predict", ["checkpoint=x", "input=y", "eval.save_predictions=false",
                                   "eval.save_overlays=false"])


def test_every_bad_value_is_named_at_once():
    cfg = compose_config("train", [])
    cfg.optim.lr, cfg.schedule.batch_size = 0, 0  # the schema's float field holds 0.0
    assert config_problems(cfg) == [
        "optim.lr=0.0: expected a number > 0", "schedule.batch_size=0: expected an integer >= 1",
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


def key_paths(node: object, prefix: str = "") -> set[str]:
    """Every dotted key of a plain container, inner nodes included."""
    if not isinstance(node, dict):
        return set()
    paths = set()
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        paths |= {path} | key_paths(value, path)
    return paths


@pytest.mark.parametrize("overrides", [
    *([f"experiment={experiment}"] for experiment in EXPERIMENTS),
    *(["experiment=voc_emanet512", f"model={model}"] for model in MODELS),
    *(["experiment=voc_emanet512", f"dataset={dataset}"] for dataset in DATASETS),
])
def test_the_shipped_configs_pass_and_every_key_they_have_is_in_the_schema(overrides):
    if any("folder" in override for override in overrides):  # a dataset of one's own: its root is required
        overrides = [*overrides, f"dataset.root={folder_dataset_root()}"]
    # compose_config checks the values: the shipped configs pass their own rules.
    cfg = compose_config("predict", [*overrides, "checkpoint=x", "input=x"])
    assert set(key_paths(OmegaConf.to_container(cfg))) <= schema_keys("predict")


def test_a_key_no_schema_declares_is_refused_where_hydra_would_add_it():
    cfg = compose_config("train", [])
    with open_dict(cfg):
        cfg.schedul = {"iterations": 5}  # what an experiment file with a typo at the top level gives
    assert config_problems(cfg) == ["schedul is not a setting (a key of no schema in emanet/config_schema.py)"]
    # model.aspp is typed Any (null for the EMA head): Hydra lets any key in; the check does not
    cfg = compose_config("train", ["experiment=voc_deeplabv3"])
    with open_dict(cfg):
        cfg.model.aspp.chanels = 128
    assert config_problems(cfg) == [
        "model.aspp.chanels is not a setting (a key of no schema in emanet/config_schema.py)"]


def test_the_rules_follow_the_tables_that_build_what_they_name():
    from emanet.data import CLASS_NAMES
    from emanet.engine.amp import AMP_DTYPES
    from emanet.models.resnet import DEPTHS, STEMS
    from emanet.models.segmentor import HEADS

    assert set(RULES["runtime.amp"].choices) == set(RULES["eval.amp"].choices) == set(AMP_DTYPES)
    assert RULES["model.head"].choices == ("ema", "ema_mmseg", "fcn", "deeplabv3", "deeplabv3plus", "psanet",
                                           "nonlocal") == tuple(HEADS)
    assert RULES["model.backbone.stem"].choices == ("deep", "v1c", "torchvision") == STEMS
    assert RULES["model.backbone.depth"].choices == (18, 34, 50, 101, 152) == tuple(DEPTHS)
    assert len(CLASS_NAMES) == 8


def test_the_key_table_has_a_row_per_key_with_its_rule():
    table = key_table().splitlines()
    assert len(table) == 2 + len(RULES)
    assert "| `schedule.iterations` | an integer >= 1 | training steps |" in table
    assert ("| `model.ema.eval_stages` | an integer >= 1 | T at evaluation (the training T unless set) |" in table)
    assert key_table(["optim."]).splitlines()[2:] == [
        "| `optim.lr` | a number > 0 | base learning rate |",
        "| `optim.momentum` | a number >= 0 and < 1 | SGD momentum |",
        "| `optim.weight_decay` | a number >= 0 | L2 weight decay |",
        "| `optim.bias_lr_mult` | a number >= 0 | learning-rate factor of biases |",
    ]


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


def test_the_docs_table_of_keys_is_the_one_the_schema_renders():
    # scripts/config_reference.py --update-docs rewrites it after a schema change.
    assert marked_section(REPO / "docs" / "configuration.md", "config-keys") == key_table()
