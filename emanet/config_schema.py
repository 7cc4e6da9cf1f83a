"""The schema of every config value: one dataclass per config group, registered with Hydra.

Each field of these dataclasses is one config key: its type and default come from the
annotation, the values it allows (a range, a few words, null or not) and a line of help
from :func:`setting`. Each group's schema is stored in Hydra's ConfigStore as
``<group>/_schema`` (hydra_plugins/emanet_schema), and the group's files list it first in
their defaults (``configs/model/_backbone.yaml``: ``[_schema, _self_]``): Hydra composes
the YAML files on top of it, so a value of the wrong type is refused when the config is
composed. The ranges, the keys no schema has and the checks between keys are applied by
:mod:`emanet.config_checks` before any data, model or training code runs; the command
line is checked against the same fields before Hydra starts (:mod:`emanet.config_keys`);
``--help`` and the table of keys in docs/configuration.md are rendered from them
(:func:`emanet.config_checks.key_table`). The top-level keys (``name``, ``seed``,
``checkpoint``, ...) differ between train.yaml, evaluate.yaml and predict.yaml, which
include one another: :data:`SCHEMAS` declares them, checked by their rules.

The words some keys allow come from the tables that build what they name: heads from
:data:`emanet.models.segmentor.HEADS`, backbone depths and stems from
:mod:`emanet.models.resnet`, precisions from :data:`emanet.engine.amp.AMP_DTYPES`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from emanet.engine.amp import AMP_DTYPES
from emanet.models.resnet import DEPTHS, STEMS
from emanet.models.segmentor import HEADS


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


@dataclass(frozen=True)
class Text:
    """Any string (a name, a path, a template); also null if ``optional``."""

    optional: bool = False

    def allows(self, value: object) -> bool:
        return isinstance(value, str) or (value is None and self.optional)

    def describe(self) -> str:
        return "a string or null" if self.optional else "a string"


@dataclass(frozen=True)
class TextList:
    """A non-empty list of strings; also null if ``optional``."""

    optional: bool = False

    def allows(self, value: object) -> bool:
        if value is None:
            return self.optional
        return isinstance(value, list | tuple) and bool(value) and all(isinstance(v, str) for v in value)

    def describe(self) -> str:
        return "a list of strings" + (" or null" if self.optional else "")


@dataclass(frozen=True)
class ColorList:
    """A non-empty list of [r, g, b] colours, each value an integer 0-255; also null if ``optional``."""

    optional: bool = False

    def allows(self, value: object) -> bool:
        if value is None:
            return self.optional
        color = NumberList(Number(integer=True, minimum=0, maximum=255), length=3)
        return isinstance(value, list | tuple) and bool(value) and all(color.allows(v) for v in value)

    def describe(self) -> str:
        return "a list of [r, g, b] (integers 0-255)" + (" or null" if self.optional else "")


@dataclass(frozen=True)
class Paths:
    """One file or folder, or a non-empty list of them."""

    def allows(self, value: object) -> bool:
        return isinstance(value, str) or TextList().allows(value)

    def describe(self) -> str:
        return "a path, or a list of paths"


Rule = Number | NumberList | Size | Boolean | Word | Text | TextList | ColorList | Paths

POSITIVE_INT = Number(integer=True, minimum=1)
NON_NEGATIVE_INT = Number(integer=True, minimum=0)
POSITIVE = Number(above=0)
NON_NEGATIVE = Number(minimum=0)
FRACTION = Number(minimum=0, maximum=1)
PRECISIONS = Word(tuple(AMP_DTYPES))
HEAD_CHANNELS = Number(integer=True, minimum=1, optional=True)


def setting(default: Any, rule: Rule, help: str) -> Any:  # noqa: A002  # the dataclass field's help text
    """A config key: its default (``MISSING``: must be given), the values ``rule`` allows,
    and one line of ``help`` for ``--help`` and docs/configuration.md."""
    metadata = {"rule": rule, "help": help}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(group: type, help: str = "") -> Any:  # noqa: A002
    """A nested group of keys (``model.ema``); ``help`` says when it applies."""
    return field(default_factory=group, metadata={"help": help})


def optional_section(group: type, help: str) -> Any:  # noqa: A002
    """A nested group only some configs have (``model.aspp``: the DeepLab heads'), null in
    the others. Its field is typed ``Any``: OmegaConf 2.3 cannot merge a value into a
    structured node that is null (``model.psa.channels=32`` for an EMA experiment), so the
    keys of ``group`` are checked by their rules (:mod:`emanet.config_checks`), which
    also refuse a key no schema has."""
    return field(default=None, metadata={"help": help, "group": group})


# --- dataset ---------------------------------------------------------------------------


@dataclass
class LayoutConfig:
    images: str = setting("JPEGImages/{id}.jpg", Text(), "image file of sample {id}, relative to dataset.root")
    labels: str = setting("SegmentationClass/{id}.png", Text(), "label PNG of sample {id}, relative to dataset.root")
    split: str = setting("ImageSets/Segmentation/{split}.txt", Text(), "list of the ids of split {split}")


@dataclass
class GenerateConfig:
    num_train: int = setting(1000, POSITIVE_INT, "synthetic training images")
    num_val: int = setting(60, POSITIVE_INT, "synthetic val images")
    min_size: int = setting(64, POSITIVE_INT, "smallest image side, pixels")
    max_size: int = setting(80, POSITIVE_INT, "largest image side, pixels")
    seed: int = setting(0, NON_NEGATIVE_INT, "seed of the generated shapes")


@dataclass
class DatasetConfig:
    name: str = setting(MISSING, Text(), "the dataset's name: a built-in one picks its class names")
    root: str = setting(MISSING, Text(), "folder of the dataset's files")
    train_split: str = setting("train", Text(), "split trained on")
    val_split: str = setting("val", Text(), "split evaluated on")
    num_classes: int = setting(MISSING, POSITIVE_INT, "classes the network predicts")
    ignore_index: int = setting(255, Number(integer=True, minimum=0, maximum=255),
                                "label value left out of loss and metrics (labels are 8-bit PNGs)")
    class_names: list[str] | None = setting(None, TextList(optional=True),
                                               "class names in label order; null: the built-in list of name")
    class_colors: list[list[int]] | None = setting(None, ColorList(optional=True),
                                                   "[r, g, b] of each class, for drawings; null: VOC's colours")
    reduce_zero_label: bool = setting(False, Boolean(), "map label 0 to ignore_index, shift the others down")
    exif_orientation: bool = setting(False, Boolean(),
                                     "turn images as their EXIF orientation says (photos; predict always does)")
    skip_bad: bool = setting(False, Boolean(), "leave out samples with bad files instead of stopping")
    crop_size: Any = setting(513, Size(), "training crop: one number (a square) or [height, width]")
    scale_sampling: str = setting("discrete", Word(("discrete", "continuous")),
                                  "discrete: a scale of train_scales; continuous: uniform in their range")
    train_scales: list[float] = setting([0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], NumberList(POSITIVE),
                                        "random rescaling of training images")
    mean: list[float] = setting([0.485, 0.456, 0.406], NumberList(FRACTION, length=3), "RGB mean of normalization")
    std: list[float] = setting([0.229, 0.224, 0.225], NumberList(POSITIVE, length=3), "RGB std of normalization")
    layout: LayoutConfig = section(LayoutConfig, "where the files are, relative to root")
    generate: Any = optional_section(GenerateConfig, "the demo's synthetic data")


# --- model -----------------------------------------------------------------------------


@dataclass
class BackboneConfig:
    depth: int = setting(101, Number(integer=True, choices=tuple(DEPTHS)), "ResNet depth")
    stem: str = setting("deep", Word(tuple(STEMS)),
                        "deep: the release's 3x3 stem; v1c: mmsegmentation's; torchvision: 7x7")
    output_stride: int = setting(8, Number(integer=True, choices=(8, 16, 32)), "training output stride")
    eval_output_stride: int | None = setting(None, Number(integer=True, choices=(8, 16, 32), optional=True),
                                                "output stride at evaluation; null: the training one")
    multi_grid: list[int] = setting([1, 2, 4], NumberList(POSITIVE_INT), "layer4 dilation factors")
    width: int = setting(64, POSITIVE_INT, "channels of the first stage (64: the standard networks)")
    pretrained: str | None = setting(None, Text(optional=True),
                                        "ImageNet weights: null, torchvision, or a file")


@dataclass
class EMAConfig:
    channels: int = setting(512, POSITIVE_INT, "C of the EMA unit: 512 for EMANet(512), 256 for EMANet(256)")
    num_bases: int = setting(64, POSITIVE_INT, "K, the number of bases")
    train_stages: int = setting(3, POSITIVE_INT, "T, the EM iterations per pass, in training")
    eval_stages: int = setting("${.train_stages}", POSITIVE_INT, "T at evaluation (the training T unless set)")
    momentum: float = setting(0.9, FRACTION, "moving average of the bases")
    lambda_: float = setting(1.0, POSITIVE, "the E step's softmax temperature")
    normalize_bases: bool = setting(True, Boolean(), "L2-normalize the bases (false: the ablation)")
    maintenance: str = setting("moving_average", Word(("moving_average", "none")),
                               "moving_average: the paper's; none: fresh random bases every pass")


@dataclass
class AuxConfig:
    weight: float = setting(0.0, NON_NEGATIVE, "weight of the auxiliary layer3 loss; 0: no auxiliary head")
    channels: int = setting(256, POSITIVE_INT, "channels of the auxiliary head")


@dataclass
class AsppConfig:
    channels: int = setting(256, POSITIVE_INT, "channels of the ASPP branches")
    rates: list[int] = setting([12, 24, 36], NumberList(POSITIVE_INT), "dilation rates of the ASPP branches")


@dataclass
class PsaConfig:
    channels: int = setting(512, POSITIVE_INT, "channels of the PSA module")
    attention_size: int = setting(33, POSITIVE_INT, "side of the point-wise attention map")


@dataclass
class ModelConfig:
    head: str = setting("ema", Word(tuple(HEADS)), "the segmentation head")
    backbone: BackboneConfig = section(BackboneConfig)
    init_from: str | None = setting(None, Text(optional=True),
                                       "weights to fine-tune from: a run directory or checkpoint (not a resume)")
    bn_momentum: float = setting(3.0e-4, Number(above=0, maximum=1), "BatchNorm momentum (PyTorch convention)")
    align_corners: bool = setting(True, Boolean(), "bilinear upsampling of the logits with align_corners")
    dropout: float = setting(0.1, Number(minimum=0, below=1), "dropout before the classifier")
    aux: AuxConfig = section(AuxConfig)
    # Keys only some heads read (HEADS[head].keys): null where the chosen head does not.
    mid_channels: int | None = setting(None, HEAD_CHANNELS, "channels of the head's convolutions")
    channels: int | None = setting(None, HEAD_CHANNELS, "channels of the FCN head")
    concat_input: bool | None = setting(None, Boolean(optional=True),
                                        "mmsegmentation's EMA head: concatenate its input")
    attention_channels: int | None = setting(None, HEAD_CHANNELS, "channels of the non-local attention")
    low_level_projection: int | None = setting(None, HEAD_CHANNELS, "DeepLabv3+: channels of the layer1 projection")
    ema: Any = optional_section(EMAConfig, "the EMA heads (ema, ema_mmseg)")
    aspp: Any = optional_section(AsppConfig, "the DeepLab heads")
    psa: Any = optional_section(PsaConfig, "the PSANet head")


# --- training --------------------------------------------------------------------------


@dataclass
class OptimConfig:
    lr: float = setting(0.009, POSITIVE, "base learning rate")
    momentum: float = setting(0.9, Number(minimum=0, below=1), "SGD momentum")
    weight_decay: float = setting(1.0e-4, NON_NEGATIVE, "L2 weight decay")
    bias_lr_mult: float = setting(2.0, NON_NEGATIVE, "learning-rate factor of biases")


@dataclass
class ScheduleConfig:
    iterations: int = setting(30000, POSITIVE_INT, "training steps")
    batch_size: int = setting(16, POSITIVE_INT, "global batch, split over processes and accumulation steps")
    accumulation_steps: int = setting(1, POSITIVE_INT, "micro-batches per step (the global batch stays)")
    power: float = setting(0.9, NON_NEGATIVE, "poly schedule: lr = base * (1 - it / iterations) ** power")
    lr_update_every: int = setting(1, POSITIVE_INT, "steps between learning-rate updates (10: the release)")
    log_every: int = setting(20, POSITIVE_INT, "steps between log lines")
    checkpoint_every: int = setting(2000, POSITIVE_INT, "steps between checkpoints")
    checkpoint_keep: int = setting(3, POSITIVE_INT, "newest iter_*.pt checkpoints kept")
    eval_every: int = setting(0, NON_NEGATIVE_INT, "steps between evaluations; 0: only at the end")


@dataclass
class LossConfig:
    normalization: str = setting("valid", Word(("valid", "all_pixels")),
                                 "valid: mean over labelled pixels; all_pixels: over every pixel (the release)")


@dataclass
class RuntimeConfig:
    device: str = setting("auto", Word(("auto", "cpu", "cuda"), pattern=r"cuda:\d+", shown="cuda:N"),
                          "where to run")
    num_workers: int = setting(4, NON_NEGATIVE_INT, "data-loading processes per training process")
    threads: int | None = setting(None, Number(integer=True, minimum=1, optional=True),
                                     "torch intra-op threads; null: torch's default")
    progress: bool = setting(True, Boolean(), "tqdm progress bars")
    amp: str = setting("off", PRECISIONS, "mixed precision of training")
    channels_last: bool = setting(False, Boolean(), "NHWC activations")
    cudnn_benchmark: bool = setting(True, Boolean(), "let cuDNN pick the fastest algorithms")
    compile: bool = setting(False, Boolean(), "torch.compile the training network")


@dataclass
class EvalConfig:
    mode: str = setting("whole", Word(("whole", "slide", "release")),
                        "whole images, crop_size windows, or the release's padding to 1 mod 8")
    scales: list[float] = setting([1.0], NumberList(POSITIVE), "test scales")
    flip: bool = setting(False, Boolean(), "add horizontally mirrored passes")
    crop_size: Any = setting(513, Size(), "slide windows: one number (squares) or [height, width]")
    stride: Any = setting(341, Size(), "slide window stride")
    crops_per_pass: int = setting(12, POSITIVE_INT, "slide windows per forward pass")
    pad_to_window: bool = setting(True, Boolean(), "pad images smaller than a window to its size")
    align_corners: bool = setting(False, Boolean(), "align_corners of the test-scale resizing")
    logits_align_corners: bool | None = setting(None, Boolean(optional=True),
                                                   "align_corners of the logits' upsampling; null: model.align_corners")
    batch_size: int = setting(1, POSITIVE_INT, "images per forward pass (of equal size)")
    save_predictions: bool = setting(False, Boolean(), "write predictions/<id>.png (palette PNGs)")
    save_overlays: bool = setting(False, Boolean(), "write overlays/<id>.jpg")
    amp: str = setting("off", PRECISIONS, "mixed precision of evaluation (follows runtime.amp)")
    channels_last: bool = setting(False, Boolean(), "NHWC inputs (follows runtime.channels_last)")
    cudnn_benchmark: bool = setting(False, Boolean(), "let cuDNN pick algorithms (slow for varying sizes)")


@dataclass
class TrainConfig:
    name: str = setting(MISSING, Text(), "the experiment's name; runs are grouped by it")
    seed: int = setting(0, NON_NEGATIVE_INT, "seed of weights, data order and augmentation")
    data_root: str = setting("data", Text(), "where datasets live (or the EMANET_DATA_ROOT environment variable)")
    dataset: DatasetConfig = section(DatasetConfig)
    model: ModelConfig = section(ModelConfig)
    optim: OptimConfig = section(OptimConfig)
    schedule: ScheduleConfig = section(ScheduleConfig)
    loss: LossConfig = section(LossConfig)
    runtime: RuntimeConfig = section(RuntimeConfig)
    eval: EvalConfig = section(EvalConfig)


@dataclass
class EvaluateConfig(TrainConfig):
    checkpoint: str = setting(MISSING, Text(), "a checkpoint file, or a training run's directory")


@dataclass
class PredictConfig(EvaluateConfig):
    input: Any = setting(MISSING, Paths(), "an image or a folder of images, or a list of them")
    stop_on_bad_file: bool = setting(False, Boolean(), "stop at an unreadable image instead of skipping it")
    max_side: int | None = setting(2048, Number(integer=True, minimum=1, optional=True),
                                      "shrink larger images to this longest side first; null: never")
    backend: str = setting("pytorch", Word(("pytorch", "onnxruntime")),
                           "run the network with PyTorch, or with onnxruntime (the run's export/model.onnx)")


# Keys the code reads although no schema declares them: adding them (+KEY=...) is
# allowed, and so is adding any key under them. Each names the file that reads it, and a
# test checks that the file does.
ADDED_KEYS = {
    # scripts/reproduce_paper.py runs the iteration table's evaluations as one multirun over
    # +iteration_cell={train:T,eval:T'}, one value per (train_stages, eval_stages) pair (a sweep over the
    # two stage keys would be their full product), and interpolates checkpoint,
    # model.ema.train_stages and model.ema.eval_stages from ${iteration_cell.train/eval}
    # (emanet.reproduce.iteration_runs).
    "iteration_cell": "emanet/reproduce.py",
}

SCHEMAS = {"train": TrainConfig, "evaluate": EvaluateConfig, "predict": PredictConfig}

# The schema each config group's files build on (their defaults list ``_schema`` first).
# The top-level keys (name, seed, checkpoint, ...) differ between train.yaml, evaluate.yaml
# and predict.yaml, which include one another: they are checked by their rules only.
GROUP_SCHEMAS = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "runtime": RuntimeConfig,
    "eval": EvalConfig,
}


def register_schemas() -> None:
    """Store each group's schema as ``<group>/_schema`` in Hydra's ConfigStore
    (hydra_plugins/emanet_schema does, when Hydra starts)."""
    store = ConfigStore.instance()
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=group, name="_schema", node=schema, provider="emanet")
