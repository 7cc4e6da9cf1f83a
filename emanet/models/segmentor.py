"""Backbone + head segmentation network and its construction from a config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from emanet.models.baseline_heads import DeepLabV3Head, DeepLabV3PlusHead, FCNHead, NonLocalHead, PSAHead
from emanet.models.ema_head import EMAHead
from emanet.models.mmseg_ema_head import MMSegEMAHead
from emanet.models.pretrained import load_backbone_weights
from emanet.models.resnet import NormLayer, ResNet


class SegmentationModel(nn.Module):
    """Runs the head on the backbone's features and upsamples the logits to the input size.

    The upsampling is bilinear with ``align_corners`` (True: the release, in training and
    testing; False: mmsegmentation). An ``aux_head`` (a deep-supervision classifier on
    layer3) runs in training mode only: the forward pass then returns
    ``(logits, aux_logits)``, both at the input size.
    """

    def __init__(
        self, backbone: ResNet, head: nn.Module, aux_head: nn.Module | None = None, align_corners: bool = True
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.align_corners = align_corners

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # images: (B, 3, H, W) -> logits (B, classes, H, W)
        features = self.backbone(images)
        logits = self._upsample(self.head(features), images)
        if self.aux_head is None or not self.training:
            return logits
        return logits, self._upsample(self.aux_head(features), images)

    def _upsample(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=self.align_corners)


def build_model(
    cfg: DictConfig, num_classes: int, load_pretrained: bool = True, auxiliary: bool = True
) -> SegmentationModel:
    """Build the network described by the ``model`` config group (checked by
    :func:`emanet.config_checks.check_config`).

    ``load_pretrained=False`` skips ImageNet weights, for models about to receive a checkpoint.
    ``auxiliary=False`` leaves out the auxiliary head (``model.aux``), which only training uses.
    ``model.align_corners`` is how the logits are upsampled to the input size.
    """
    norm_layer = partial(nn.BatchNorm2d, momentum=cfg.bn_momentum)
    backbone = ResNet(
        depth=cfg.backbone.depth,
        stem=cfg.backbone.stem,
        output_stride=cfg.backbone.output_stride,
        multi_grid=tuple(cfg.backbone.multi_grid),
        width=cfg.backbone.width,
        norm_layer=norm_layer,
    )
    head = HEADS[cfg.head].build(cfg, backbone, num_classes, norm_layer)
    aux_head = None
    if auxiliary and cfg.aux.weight > 0:
        aux_head = FCNHead(
            backbone.layer3_channels, num_classes, cfg.aux.channels, cfg.dropout, norm_layer, in_feature="layer3"
        )
    if load_pretrained and cfg.backbone.pretrained:
        load_backbone_weights(backbone, cfg.backbone.pretrained, cfg.backbone.depth, cfg.backbone.stem)
    return SegmentationModel(backbone, head, aux_head, align_corners=cfg.align_corners)


def ema_head(cfg: DictConfig, backbone: ResNet, num_classes: int, norm_layer: NormLayer) -> nn.Module:
    return EMAHead(
        in_channels=backbone.out_channels,
        num_classes=num_classes,
        ema_channels=cfg.ema.channels,
        mid_channels=cfg.mid_channels,
        num_bases=cfg.ema.num_bases,
        train_stages=cfg.ema.train_stages,
        eval_stages=cfg.ema.eval_stages,
        momentum=cfg.ema.momentum,
        lambda_=cfg.ema.lambda_,
        normalize_bases=cfg.ema.normalize_bases,
        maintenance=cfg.ema.maintenance,
        dropout=cfg.dropout,
        norm_layer=norm_layer,
    )


def mmseg_ema_head(cfg: DictConfig, backbone: ResNet, num_classes: int, norm_layer: NormLayer) -> nn.Module:
    return MMSegEMAHead(
        in_channels=backbone.out_channels,
        num_classes=num_classes,
        ema_channels=cfg.ema.channels,
        channels=cfg.mid_channels,
        num_bases=cfg.ema.num_bases,
        train_stages=cfg.ema.train_stages,
        eval_stages=cfg.ema.eval_stages,
        momentum=cfg.ema.momentum,
        concat_input=cfg.concat_input,
        dropout=cfg.dropout,
        norm_layer=norm_layer,
    )


def fcn_head(cfg: DictConfig, backbone: ResNet, num_classes: int, norm_layer: NormLayer) -> nn.Module:
    return FCNHead(backbone.out_channels, num_classes, cfg.channels, cfg.dropout, norm_layer)


def deeplabv3_head(cfg: DictConfig, backbone: ResNet, num_classes: int, norm_layer: NormLayer) -> nn.Module:
    return DeepLabV3Head(
        backbone.out_channels, num_classes, cfg.aspp.channels, tuple(cfg.aspp.rates), cfg.dropout, norm_layer
    )


def deeplabv3plus_head(cfg: DictConfig, backbone: ResNet, num_classes: int, norm_layer: NormLayer) -> nn.Module:
    return DeepLabV3PlusHead(
        backbone.out_channels, backbone.low_level_channels, num_classes, cfg.aspp.channels, tuple(cfg.aspp.rates),
        cfg.low_level_projection, cfg.dropout, norm_layer,
    )


def psanet_head(cfg: DictConfig, backbone: ResNet, num_classes: int, norm_layer: NormLayer) -> nn.Module:
    return PSAHead(
        backbone.out_channels, num_classes, cfg.psa.channels, cfg.psa.attention_size, cfg.mid_channels, cfg.dropout,
        norm_layer,
    )


def nonlocal_head(cfg: DictConfig, backbone: ResNet, num_classes: int, norm_layer: NormLayer) -> nn.Module:
    return NonLocalHead(
        backbone.out_channels, num_classes, cfg.attention_channels, cfg.mid_channels, cfg.dropout, norm_layer
    )


@dataclass(frozen=True)
class HeadEntry:
    """A head of ``model.head``: how it is built from the ``model`` config, the ``model.*``
    keys it reads besides the shared ones (the config check requires them), and whether it
    runs EM iterations (then ``model.ema.train_stages`` / ``eval_stages`` are its T)."""

    build: Callable[[DictConfig, ResNet, int, NormLayer], nn.Module]
    keys: tuple[str, ...]
    em: bool = False


# Every head, once: build_model, the config schema (emanet/config_schema.py) and --help read it.
HEADS: dict[str, HeadEntry] = {
    "ema": HeadEntry(ema_head, ("mid_channels", "ema"), em=True),
    "ema_mmseg": HeadEntry(mmseg_ema_head, ("mid_channels", "concat_input", "ema"), em=True),
    "fcn": HeadEntry(fcn_head, ("channels",)),
    "deeplabv3": HeadEntry(deeplabv3_head, ("aspp",)),
    "deeplabv3plus": HeadEntry(deeplabv3plus_head, ("aspp", "low_level_projection")),
    "psanet": HeadEntry(psanet_head, ("psa", "mid_channels")),
    "nonlocal": HeadEntry(nonlocal_head, ("attention_channels", "mid_channels")),
}

# Heads that run EM iterations: model.ema.train_stages / eval_stages (T) apply to them.
EM_HEADS = tuple(name for name, entry in HEADS.items() if entry.em)


def eval_output_stride_of(cfg: DictConfig) -> int:
    """The backbone's output stride when evaluating a run of config ``cfg``:
    ``model.backbone.eval_output_stride`` where set (the paper evaluates its OS16 ablations
    at OS8), else the training one."""
    backbone = cfg.model.backbone
    return backbone.get("eval_output_stride") or backbone.output_stride


def eval_stages_of(cfg: DictConfig) -> int | None:
    """The EM iterations T that evaluating a run of config ``cfg`` runs: ``model.ema.eval_stages``,
    None for a head without EM iterations."""
    return OmegaConf.select(cfg, "model.ema.eval_stages") if cfg.model.head in EM_HEADS else None
