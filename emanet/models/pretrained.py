"""ImageNet-pretrained backbone weights: torchvision's, the release's, or this project's.

``model.backbone.pretrained`` accepts

* ``torchvision``: torchvision's ImageNet weights for the torchvision stem, fetched through
  torchvision's weights API into the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
* a file path holding a state dict in torchvision's layout (``conv1.weight``...), in the
  release's deep-stem layout (``conv1.{0,1,3,4,6}``, ``bn1``, ``layer1..4``, ``fc``), or a
  full checkpoint of this project (``{"model": ...}``, whose ``backbone.*`` weights are used).

The classifier ``fc.*`` of ImageNet weights is dropped and keys the backbone does not
use are reported; a backbone tensor the file lacks (``num_batches_tracked`` aside) or a
shape mismatch is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from emanet.errors import CheckpointError

log = logging.getLogger(__name__)


def torchvision_weights(depth: int):
    """torchvision's ImageNet weights of ResNet-``depth`` (a ``WeightsEnum`` member: its
    ``url`` names the file in the torch hub cache)."""
    import torchvision

    return torchvision.models.get_model_weights(f"resnet{depth}").IMAGENET1K_V1


def torchvision_state_dict(depth: int) -> dict[str, torch.Tensor]:
    return torchvision_weights(depth).get_state_dict(progress=True)


def backbone_state_dict_from_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"pretrained weights not found at {path}: set model.backbone.pretrained to a file, "
            "'torchvision', or null"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read pretrained weights {path}: {error}") from error
    if isinstance(state, Mapping) and "model" in state:  # a checkpoint of this project
        state = {k.removeprefix("backbone."): v for k, v in state["model"].items() if k.startswith("backbone.")}
    elif isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(backbone: nn.Module, source: str, depth: int, stem: str) -> None:
    """Load ImageNet weights into ``backbone`` from ``source`` ('torchvision' or a path)."""
    if source == "torchvision":
        if stem != "torchvision":
            raise CheckpointError(
                "model.backbone.pretrained=torchvision needs model.backbone.stem=torchvision "
                "(torchvision has no deep-stem weights): set the stem or give a weights file"
            )
        state = torchvision_state_dict(depth)
        origin = f"torchvision resnet{depth} IMAGENET1K_V1"
    else:
        state = backbone_state_dict_from_file(source)
        origin = str(source)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"pretrained weights {origin} do not fit the backbone (check model.backbone.depth, "
            f"stem and width): {'; '.join(mismatched[:3])}"
        )
    # Files written before PyTorch 1.0 (the release's among them) have no num_batches_tracked.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        # Loading the rest would train from a partly random backbone without a sign of it.
        raise CheckpointError(
            f"pretrained weights {origin} lack {len(missing)} of the backbone's tensors (e.g. "
            f"{', '.join(missing[:3])}): the file is in another layout or for another stem "
            "(model.backbone.stem); see emanet/models/pretrained.py for the layouts read, "
            "or set model.backbone.pretrained=null to train from scratch"
        )
    result = backbone.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        log.warning(
            "pretrained weights %s have %d keys the backbone does not use, e.g. %s",
            origin, len(result.unexpected_keys), result.unexpected_keys[:5],
        )
    log.info("loaded ImageNet weights from %s (%d tensors)", origin, len(set(state) & set(own)))
