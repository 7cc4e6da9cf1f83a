"""Every value of a resolved config checked at startup, before data, model or training.

One table names what each key allows; :func:`check_config` reports every key whose value
breaks its rule in one line (key, value, what is allowed), so a run with a typo stops at
once instead of failing in a traceback, or after hours of training, deep in the code that
first uses the value. The table covers every numeric and boolean key of every config
group, and the keys that take one of a few words; a test keeps it complete.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from emanet.data.transforms import height_width
from emanet.errors import ConfigError


@dataclass(frozen=True)
class Number:
    """An int (``integer``) or any real number within bounds; None allowed if ``optional``."""

    integer: bool = False
    minimum: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    maximum: float | None = None  # inclusive
    below: float | None = None  # exclusive upper bound
    choices: tuple[int, ...] = ()
    optional: bool = False

    def allows(self, value: object) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value) or (self.choices and value not in self.choices):
            return False
        return not (
            (self.minimum is not None and value < self.minimum)
            or (self.above is not None and value <= self.above)
            or (self.maximum is not None and value > self.maximum)
            or (self.below is not None and value >= self.below)
        )

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(str(choice) for choice in self.choices)
        else:
            bounds = [f">= {self.minimum:g}" if self.minimum is not None else "",
                      f"> {self.above:g}" if self.above is not None else "",
                      f"<= {self.maximum:g}" if self.maximum is not None else "",
                      f"< {self.below:g}" if self.below is not None else ""]
            kind = "an integer" if self.integer else "a number"
            text = " ".join([kind, " and ".join(bound for bound in bounds if bound)]).strip()
        return text + (" or null" if self.optional else "")


@dataclass(frozen=True)
class NumberList:
    """A non-empty list (of ``length`` items, if set) of numbers each allowed by ``item``."""

    item: Number
    length: int | None = None

    def allows(self, value: object) -> bool:
        if not isinstance(value, list | tuple) or not value:
            return False
        return (self.length is None or len(value) == self.length) and all(self.item.allows(v) for v in value)

    def describe(self) -> str:
        count = f"{self.length} numbers" if self.length else "a non-empty list of numbers"
        return f"{count}, each {self.item.describe()}"


@dataclass(frozen=True)
class Size:
    """A crop or window size: one positive integer (a square) or [height, width]."""

    def allows(self, value: object) -> bool:
        return POSITIVE_INT.allows(value) or NumberList(POSITIVE_INT, length=2).allows(value)

    def describe(self) -> str:
        return "an integer >= 1, or [height, width] of such integers"


@dataclass(frozen=True)
class Boolean:
    """true or false; also null if ``optional``."""

    optional: bool = False

    def allows(self, value: object) -> bool:
        return isinstance(value, bool) or (value is None and self.optional)

    def describe(self) -> str:
        return "true, false or null" if self.optional else "true or false"


@dataclass(frozen=True)
class Word:
    """One of ``choices``, or a string matching ``pattern`` (shown to people as ``shown``)."""

    choices: tuple[str, ...]
    pattern: str | None = None
    shown: str = ""

    def allows(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        return value in self.choices or (self.pattern is not None and re.fullmatch(self.pattern, value) is not None)

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices) + (f" or {self.shown}" if self.shown else "")


POSITIVE_INT = Number(integer=True, minimum=1)
NON_NEGATIVE_INT = Number(integer=True, minimum=0)
POSITIVE = Number(above=0)
NON_NEGATIVE = Number(minimum=0)
FRACTION = Number(minimum=0, maximum=1)
PRECISIONS = Word(("off", "bf16", "fp16"))

RULES: dict[str, Number | NumberList | Size | Boolean | Word] = {
    "seed": NON_NEGATIVE_INT,
    # dataset
    "dataset.num_classes": POSITIVE_INT,
    "dataset.ignore_index": Number(integer=True, minimum=0, maximum=255),  # labels are 8-bit PNGs
    "dataset.ignore_background": Boolean(),
    "dataset.skip_bad": Boolean(),
    "dataset.crop_size": Size(),
    "dataset.scale_sampling": Word(("discrete", "continuous")),
    "dataset.train_scales": NumberList(POSITIVE),
    "dataset.mean": NumberList(FRACTION, length=3),
    "dataset.std": NumberList(POSITIVE, length=3),
    "dataset.generate.num_train": POSITIVE_INT,
    "dataset.generate.num_val": POSITIVE_INT,
    "dataset.generate.min_size": POSITIVE_INT,
    "dataset.generate.max_size": POSITIVE_INT,
    "dataset.generate.seed": NON_NEGATIVE_INT,
    # model
    "model.head": Word(("ema", "ema_mmseg", "fcn", "deeplabv3", "deeplabv3plus", "psanet", "nonlocal")),
    "model.backbone.depth": Number(integer=True, choices=(18, 34, 50, 101, 152)),
    "model.backbone.width": POSITIVE_INT,
    "model.backbone.stem": Word(("deep", "v1c", "torchvision")),
    "model.backbone.output_stride": Number(integer=True, choices=(8, 16, 32)),
    "model.backbone.eval_output_stride": Number(integer=True, choices=(8, 16, 32), optional=True),
    "model.backbone.multi_grid": NumberList(POSITIVE_INT),
    "model.bn_momentum": Number(above=0, maximum=1),
    "model.dropout": Number(minimum=0, below=1),
    "model.align_corners": Boolean(),
    "model.concat_input": Boolean(),
    "model.mid_channels": POSITIVE_INT,
    "model.channels": POSITIVE_INT,
    "model.attention_channels": POSITIVE_INT,
    "model.low_level_projection": POSITIVE_INT,
    "model.ema.channels": POSITIVE_INT,
    "model.ema.num_bases": POSITIVE_INT,
    "model.ema.train_stages": POSITIVE_INT,
    "model.ema.eval_stages": POSITIVE_INT,
    "model.ema.momentum": FRACTION,
    "model.ema.lambda_": POSITIVE,
    "model.ema.normalize_bases": Boolean(),
    "model.ema.maintenance": Word(("moving_average", "none")),
    "model.aux.channels": POSITIVE_INT,
    "model.aux.weight": NON_NEGATIVE,
    "model.aspp.channels": POSITIVE_INT,
    "model.aspp.rates": NumberList(POSITIVE_INT),
    "model.psa.channels": POSITIVE_INT,
    "model.psa.attention_size": POSITIVE_INT,
    # optim, schedule, loss
    "optim.lr": POSITIVE,
    "optim.momentum": Number(minimum=0, below=1),
    "optim.weight_decay": NON_NEGATIVE,
    "optim.bias_lr_mult": NON_NEGATIVE,
    "schedule.iterations": POSITIVE_INT,
    "schedule.batch_size": POSITIVE_INT,
    "schedule.accumulation_steps": POSITIVE_INT,
    "schedule.power": NON_NEGATIVE,
    "schedule.lr_update_every": POSITIVE_INT,
    "schedule.log_every": POSITIVE_INT,
    "schedule.checkpoint_every": POSITIVE_INT,
    "schedule.checkpoint_keep": POSITIVE_INT,
    "schedule.eval_every": NON_NEGATIVE_INT,
    "loss.normalization": Word(("valid", "all_pixels")),
    # runtime
    "runtime.device": Word(("auto", "cpu", "cuda"), pattern=r"cuda:\d+", shown="cuda:N"),
    "runtime.num_workers": NON_NEGATIVE_INT,
    "runtime.threads": Number(integer=True, minimum=1, optional=True),
    "runtime.progress": Boolean(),
    "runtime.amp": PRECISIONS,
    "runtime.channels_last": Boolean(),
    "runtime.cudnn_benchmark": Boolean(),
    "runtime.compile": Boolean(),
    # scripts/predict.py
    "max_side": Number(integer=True, minimum=1, optional=True),
    "stop_on_bad_file": Boolean(),
    # eval
    "eval.mode": Word(("whole", "slide", "release")),
    "eval.scales": NumberList(POSITIVE),
    "eval.flip": Boolean(),
    "eval.crop_size": Size(),
    "eval.stride": Size(),
    "eval.crops_per_pass": POSITIVE_INT,
    "eval.align_corners": Boolean(),
    "eval.logits_align_corners": Boolean(optional=True),
    "eval.pad_to_window": Boolean(),
    "eval.batch_size": POSITIVE_INT,
    "eval.save_predictions": Boolean(),
    "eval.save_overlays": Boolean(),
    "eval.amp": PRECISIONS,
    "eval.channels_last": Boolean(),
    "eval.cudnn_benchmark": Boolean(),
}

_ABSENT = object()


def config_problems(cfg: DictConfig) -> list[str]:
    """``key=value: expected ...`` for every value the table refuses, then the checks
    between keys. Keys a config does not have (another head's) are skipped, and so are
    values that interpolate another key (``eval.amp: ${runtime.amp}``): the key they
    follow is checked, and reported, itself."""
    problems = []
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
    generate = OmegaConf.select(cfg, "dataset.generate")
    if generate is not None and generate.min_size > generate.max_size:
        yield (f"dataset.generate.min_size={generate.min_size} is larger than "
               f"dataset.generate.max_size={generate.max_size}")
    stride, crop = (to_plain(cfg.eval[key]) for key in ("stride", "crop_size"))
    if cfg.eval.mode == "slide" and any(s > c for s, c in zip(height_width(stride), height_width(crop), strict=True)):
        yield (f"eval.stride={format_value(stride)} is larger than eval.crop_size={format_value(crop)}: "
               "the windows would leave gaps")


def to_plain(value: object) -> object:
    """A config value as Python and JSON take it: lists and dicts for config containers."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


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


def unchecked_keys(cfg: DictConfig, checked: Sequence[str] = tuple(RULES)) -> list[str]:
    """The numeric and boolean keys of ``cfg`` that no rule covers (for the test that keeps
    the table complete)."""
    found = []

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif prefix not in checked and (
            isinstance(node, bool | int | float) or (isinstance(node, list) and node and
                                                       all(isinstance(v, int | float) for v in node))
        ):
            found.append(prefix)

    walk(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), "")
    return found
