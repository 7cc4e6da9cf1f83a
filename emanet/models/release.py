"""The authors' released checkpoint format and its conversion to this project's.

The release saves ``{'net': state_dict, 'step': int}`` with keys ``extractor.*`` (the
deep-stem ResNet as one ``nn.Sequential``), ``fc0`` (reduction conv), ``emau`` (the EMA
unit), ``fc1`` (3x3 conv before dropout) and ``fc2`` (classifier); training with
``nn.DataParallel`` may have prefixed every key with ``module.``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from emanet.errors import CheckpointError

# Release prefix -> this project's prefix; the first match wins.
RELEASE_TO_PROJECT = (
    ("extractor.0.", "backbone.conv1."),
    ("extractor.1.", "backbone.bn1."),
    ("extractor.4.", "backbone.layer1."),
    ("extractor.5.", "backbone.layer2."),
    ("extractor.6.", "backbone.layer3."),
    ("extractor.7.", "backbone.layer4."),
    ("fc0.conv.", "head.reduce.0."),
    ("fc0.bn.", "head.reduce.1."),
    ("emau.mu", "head.ema.mu"),
    ("emau.conv1.", "head.ema.conv_in."),
    ("emau.conv2.0.", "head.ema.conv_out.0."),
    ("emau.conv2.1.", "head.ema.conv_out.1."),
    ("fc1.0.conv.", "head.fuse.0."),
    ("fc1.0.bn.", "head.fuse.1."),
    ("fc2.", "head.classifier."),
)


def renamed(key: str, table: tuple[tuple[str, str], ...]) -> str | None:
    """``key`` with the first matching prefix of ``table`` (old prefix -> new prefix)
    replaced, or None if none matches; the renaming of every converted checkpoint format."""
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def convert_release_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a release ``net`` state dict to this project's :class:`SegmentationModel` keys."""
    converted = {}
    unknown = []
    for key, value in state.items():
        key = key.removeprefix("module.")
        new_key = renamed(key, RELEASE_TO_PROJECT)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise CheckpointError(f"keys the release's EMANet does not have: {unknown[:5]}")
    return converted


def read_release_checkpoint(path) -> tuple[dict[str, torch.Tensor], int]:
    """The converted state dict and the training step of a release checkpoint file."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    if not isinstance(checkpoint, Mapping) or "net" not in checkpoint:
        raise CheckpointError(f"{path} is not a release checkpoint (a dict with 'net' and 'step')")
    try:
        state = convert_release_state_dict(checkpoint["net"])
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return state, int(checkpoint.get("step", 0))
