"""Every value of a resolved config checked at startup, before data, model or training.

The rules come from the schema (:mod:`emanet.config_schema`): :func:`check_config` reports
every key whose value breaks its rule, and every pair of keys that contradict each other,
in one line (key, value, what is allowed), so a run with a typo stops at once instead of
failing in a traceback, or after hours of training, deep in the code that first uses the
value. Engine, model and data code take a checked config and do not check it again.
:func:`key_table` renders the same rules for ``--help`` and docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from emanet.config_schema import ADDED_KEYS, SCHEMAS, Rule
from emanet.data import CLASS_NAMES
from emanet.data.transforms import height_width
from emanet.errors import ConfigError
from emanet.io import to_plain
from emanet.models.resnet import DEPTHS
from emanet.models.segmentor import HEADS


def schema_rules(schema: type, prefix: str = "") -> Iterator[tuple[str, Rule, str]]:
    """(dotted key, rule, help) of every key of the dataclass ``schema``, nested groups included."""
    for spec in dataclasses.fields(schema):
        key = f"{prefix}{spec.name}"
        if "rule" in spec.metadata:
            yield key, spec.metadata["rule"], spec.metadata["help"]
        else:  # a nested group: a section's default_factory, or an optional section's "group"
            yield from schema_rules(spec.metadata.get("group") or spec.default_factory, f"{key}.")


# Every key of every entry point (predict's config has them all), with its rule and help.
KEYS: dict[str, tuple[Rule, str]] = {key: (rule, help) for key, rule, help in schema_rules(SCHEMAS["predict"])}
RULES: dict[str, Rule] = {key: rule for key, (rule, _) in KEYS.items()}


def schema_keys(config_name: str) -> set[str]:
    """Every dotted key of the schema of ``config_name`` ("train", "evaluate", "predict"; any
    other name: predict's, which has them all), inner nodes (``model.ema``) included."""
    keys = set()
    for key, _, _ in schema_rules(SCHEMAS.get(config_name, SCHEMAS["predict"])):
        parts = key.split(".")
        keys.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return keys


def unknown_keys(cfg: DictConfig) -> list[str]:
    """The dotted keys of ``cfg`` no schema has: a typo in an experiment file, or a key under a
    group typed ``Any`` (``model.aspp``), which Hydra does not check (``hydra.*`` and
    :data:`ADDED_KEYS` are not the schema's)."""
    known = schema_keys("predict")
    found = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in ADDED_KEYS or path == "hydra":
                continue
            if path not in known:
                found.append(path)
            elif isinstance(value, dict):
                walk(value, f"{path}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return found

_ABSENT = object()


def config_problems(cfg: DictConfig) -> list[str]:
    """``key=value: expected ...`` for every value the table refuses, then the checks
    between keys. Keys a config does not have (another head's) are skipped, and so are
    values that interpolate another key (``eval.amp: ${runtime.amp}``): the key they
    follow is checked, and reported, itself."""
    problems = [f"{key} is not a setting (a key of no schema in emanet/config_schema.py)"
                for key in unknown_keys(cfg)]
    for key, rule in RULES.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and leaf in node and OmegaConf.is_interpolation(node, leaf):
            continue
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        except MissingMandatoryValue:
            problems.append(f"{key} is not set: pass {key}=... on the command line")
            continue
        except InterpolationResolutionError as error:
            problems.append(f"{key}: {error.msg}")
            continue
        if value is _ABSENT:
            continue
        value = to_plain(value)
        if not rule.allows(value):
            problems.append(f"{key}={format_value(value)}: expected {rule.describe()}")
    if not problems:
        problems.extend(relation_problems(cfg))
    return problems


def relation_problems(cfg: DictConfig) -> Iterator[str]:
    """The checks between keys, for a config whose every value its rule allows."""
    model = cfg.model
    for key in HEADS[model.head].keys:
        if model.get(key) is None:
            yield (f"model.head={model.head} reads model.{key}, which is not set: select the head's own model "
                   f"config (configs/model/) or pass model.{key}=...")
    backbone = model.backbone
    layer4_blocks = DEPTHS[backbone.depth][1][3]
    if len(backbone.multi_grid) != layer4_blocks:
        yield (f"model.backbone.multi_grid needs one factor per layer4 block ({layer4_blocks}), got "
               f"{format_value(list(backbone.multi_grid))}: set it with the depth ([1,2] for depth 18/34, [1,2,4] "
               "for 50/101/152)")
    elif backbone.multi_grid[0] != 1:  # the first layer4 block takes the dilation of layer3's last
        yield f"model.backbone.multi_grid={format_value(list(backbone.multi_grid))}: expected a list starting with 1"
    if model.backbone.stem == "v1c" and model.backbone.width % 2:
        yield (f"model.backbone.width={model.backbone.width} is odd: model.backbone.stem=v1c's first two "
               "convolutions have width / 2 channels")
    dataset = cfg.dataset
    class_names = dataset.get("class_names")
    if class_names is None and dataset.name not in CLASS_NAMES:
        yield (f"dataset.name={dataset.name} has no built-in class names (built in: {', '.join(CLASS_NAMES)}): "
               "for a dataset of your own, list its classes in dataset.class_names")
    else:
        names, source = (class_names, "dataset.class_names lists") if class_names is not None else (
            CLASS_NAMES[dataset.name], f"dataset.name={dataset.name} has")
        if len(names) != dataset.num_classes:
            yield f"dataset.num_classes={dataset.num_classes} but {source} {len(names)} classes"
    if "input" in cfg and not (cfg.eval.save_predictions or cfg.eval.save_overlays):
        yield "eval.save_predictions and eval.save_overlays are both false: nothing would be written"
    generate = OmegaConf.select(cfg, "dataset.generate")
    if generate is not None and generate.min_size > generate.max_size:
        yield (f"dataset.generate.min_size={generate.min_size} is larger than "
               f"dataset.generate.max_size={generate.max_size}")
    stride, crop = (to_plain(cfg.eval[key]) for key in ("stride", "crop_size"))
    if cfg.eval.mode == "slide" and any(s > c for s, c in zip(height_width(stride), height_width(crop), strict=True)):
        yield (f"eval.stride={format_value(stride)} is larger than eval.crop_size={format_value(crop)}: "
               "the windows would leave gaps")


def format_value(value: object) -> str:
    if isinstance(value, str):
        return value if value else "''"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def check_config(cfg: DictConfig) -> None:
    """Raise one :class:`ConfigError` naming every value the rules refuse."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def key_table(prefixes: Sequence[str] = ("",)) -> str:
    """A Markdown table of every key starting with one of ``prefixes``: what it allows
    and what it does (docs/configuration.md; ``--help`` lists the most changed)."""
    lines = ["| key | allowed values | what it does |", "| --- | --- | --- |"]
    for key, (rule, help) in KEYS.items():
        if key.startswith(tuple(prefixes)):
            lines.append(f"| `{key}` | {rule.describe()} | {help} |")
    return "\n".join(lines) + "\n"
