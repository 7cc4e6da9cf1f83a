"""mmsegmentation's EMANet checkpoints and their strict conversion to this project's keys.

mmsegmentation saves ``{'state_dict': ..., 'meta': {...}}`` (``meta['iter']`` is the
training iteration). Its keys: ``backbone.*`` (ResNetV1c, the stem as
``backbone.stem.{0,1,3,4,6,7}``, which :class:`~emanet.models.resnet.ResNet` with
``stem="v1c"`` names alike), ``decode_head.*`` (EMAHead, whose ConvModules hold ``conv``
and ``bn``) and ``auxiliary_head.*`` (an FCNHead on layer3). The model of
``model=emanet_mmseg`` has one tensor for each of them; a file with any key left over, any
tensor missing or any shape that differs is refused.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from emanet.errors import CheckpointError
from emanet.models.release import renamed

# mmsegmentation prefix -> this project's prefix; the first match wins.
MMSEG_TO_PROJECT = (
    ("backbone.", "backbone."),
    ("decode_head.ema_in_conv.conv.", "head.ema_in_conv.0."),
    ("decode_head.ema_in_conv.bn.", "head.ema_in_conv.1."),
    ("decode_head.ema_mid_conv.conv.", "head.ema_mid_conv."),
    ("decode_head.ema_module.bases", "head.ema_module.bases"),
    ("decode_head.ema_out_conv.conv.", "head.ema_out_conv.0."),
    ("decode_head.ema_out_conv.bn.", "head.ema_out_conv.1."),
    ("decode_head.bottleneck.conv.", "head.bottleneck.0."),
    ("decode_head.bottleneck.bn.", "head.bottleneck.1."),
    ("decode_head.conv_cat.conv.", "head.conv_cat.0."),
    ("decode_head.conv_cat.bn.", "head.conv_cat.1."),
    ("decode_head.conv_seg.", "head.conv_seg."),
    ("auxiliary_head.convs.0.conv.", "aux_head.conv.0."),
    ("auxiliary_head.convs.0.bn.", "aux_head.conv.1."),
    ("auxiliary_head.conv_seg.", "aux_head.classifier."),
)
PROJECT_TO_MMSEG = tuple((new, old) for old, new in MMSEG_TO_PROJECT)

KEY_EXAMPLES = 3  # keys named in an error; a checkpoint of another network differs in hundreds


def examples(keys: list[str]) -> str:
    return ", ".join(keys[:KEY_EXAMPLES]) + (", ..." if len(keys) > KEY_EXAMPLES else "")


def convert_mmseg_state_dict(
    state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], origin: str | Path
) -> dict[str, torch.Tensor]:
    """``state`` (mmsegmentation's keys) renamed to the keys of ``model_state``, checked to
    fill every one of them with a tensor of its shape and to leave none of its own unused.

    Raises :class:`CheckpointError` in one line naming ``origin`` and the first keys at fault,
    in mmsegmentation's names (those the file has, or would have).
    """
    converted = {}
    unexpected = []
    for key, value in state.items():
        new_key = renamed(key, MMSEG_TO_PROJECT)
        if new_key is None or new_key not in model_state:
            unexpected.append(key)
        else:
            converted[new_key] = value
    missing = [renamed(key, PROJECT_TO_MMSEG) or key for key in model_state if key not in converted]
    problems = []
    if missing:
        problems.append(f"lacks {len(missing)} of the model's tensors ({examples(missing)})")
    if unexpected:
        noun = "key" if len(unexpected) == 1 else "keys"
        problems.append(f"has {len(unexpected)} {noun} the model does not ({examples(unexpected)})")
    if problems:
        raise CheckpointError(
            f"{origin} {' and '.join(problems)}: it is not a checkpoint of the configured mmsegmentation EMANet "
            "(check the experiment, model.backbone.depth and model.aux.weight)"
        )
    for new_key, value in converted.items():
        if not isinstance(value, torch.Tensor) or value.shape != model_state[new_key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(
                f"{origin}: {renamed(new_key, PROJECT_TO_MMSEG)} is {shape}, the model's {new_key} is "
                f"{tuple(model_state[new_key].shape)} (check dataset.num_classes, model.backbone.depth and the "
                "model.ema.* sizes)"
            )
    return converted


def read_mmseg_checkpoint(path: str | Path, trusted: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict (mmsegmentation's keys) and ``meta`` of one of their files (``{}``
    when the file has none).

    The file is read as tensors and plain containers only unless ``trusted``: a pickle can
    run code, so a file holding other objects is refused without it.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trusted)
    except FileNotFoundError:
        raise CheckpointError(f"mmsegmentation checkpoint not found: {path}") from None
    except Exception as error:
        hint = "" if trusted else " (if the file is from a source you trust, import it with trusted=True / --trusted)"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot read {path}: {first_line}{hint}") from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not an mmsegmentation checkpoint (a dict with 'state_dict' and 'meta')")
    meta = checkpoint.get("meta")
    return dict(checkpoint["state_dict"]), dict(meta) if isinstance(meta, Mapping) else {}


def saved_iteration(meta: Mapping) -> int:
    """The training iteration a checkpoint was saved at (``meta['iter']``; 0 if absent)."""
    return int(meta.get("iter") or 0)


@dataclass(frozen=True)
class RecordedRecipe:
    """What a checkpoint's recorded config says of the training crops ([height, width]) and
    of the heads' ``align_corners``; None where it says nothing."""

    crop_size: tuple[int, int] | None = None
    align_corners: bool | None = None


def recorded_recipe(meta: Mapping) -> RecordedRecipe:
    """The crop size and decode head's ``align_corners`` of the config a checkpoint records.

    mmsegmentation 0.x stores the training config's text as ``meta['config']``
    (``cfg.pretty_text``, mmseg/apis/train.py), mmengine-based 1.x as ``meta['cfg']``. Both
    are Python source: read here with :mod:`ast`, never run. A top-level ``crop_size = (h, w)``
    gives the crops, ``model = dict(decode_head=dict(align_corners=...))`` the convention;
    text that is missing or not Python gives an empty recipe.
    """
    text = meta.get("config", meta.get("cfg"))
    if not isinstance(text, str):
        return RecordedRecipe()
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return RecordedRecipe()
    crop_size = align_corners = None
    for statement in tree.body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            continue
        name = statement.targets[0].id
        if name == "crop_size":
            value = literal(statement.value)
            if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
                crop_size = (value[0], value[1])
        elif name == "model":
            value = literal(dict_entry(dict_entry(statement.value, "decode_head"), "align_corners"))
            if isinstance(value, bool):
                align_corners = value
    return RecordedRecipe(crop_size, align_corners)


def dict_entry(node: ast.AST | None, key: str) -> ast.AST | None:
    """The value of ``key`` in a ``dict(key=...)`` call or a ``{'key': ...}`` literal."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return next((keyword.value for keyword in node.keywords if keyword.arg == key), None)
    if isinstance(node, ast.Dict):
        for name, value in zip(node.keys, node.values, strict=True):
            if isinstance(name, ast.Constant) and name.value == key:
                return value
    return None


def literal(node: ast.AST | None):
    try:
        return None if node is None else ast.literal_eval(node)
    except ValueError:
        return None


def recipe_conflicts(recorded: RecordedRecipe, crop_size: tuple[int, int], align_corners: bool) -> list[str]:
    """The settings in which ``recorded`` contradicts a model trained on ``crop_size`` crops
    with ``align_corners``, e.g. ``["769x769 crops (the experiment's: 512x1024)"]``."""
    conflicts = []
    if recorded.crop_size is not None and tuple(recorded.crop_size) != tuple(crop_size):
        conflicts.append(f"{'x'.join(map(str, recorded.crop_size))} crops (the experiment's: "
                         f"{'x'.join(map(str, crop_size))})")
    if recorded.align_corners is not None and recorded.align_corners != align_corners:
        conflicts.append(f"align_corners={recorded.align_corners} (the experiment's: {align_corners})")
    return conflicts


def load_mmseg_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Load mmsegmentation's EMANet ``state`` (read from ``path``) into ``model`` strictly."""
    model.load_state_dict(convert_mmseg_state_dict(state, model.state_dict(), path), strict=True)
