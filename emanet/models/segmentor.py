"""Backbone + head segmentation network and its construction from a config."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from emanet.errors import ConfigError
from emanet.models.baseline_heads import DeepLabV3Head, DeepLabV3PlusHead, FCNHead, NonLocalHead, PSAHead
from emanet.models.ema_head import EMAHead
from emanet.models.pretrained import load_backbone_weights
from emanet.models.resnet import ResNet


class SegmentationModel(nn.Module):
    """Runs the head on the backbone's features and upsamples the logits to the input size.

    The upsampling uses ``align_corners=True``, as the release does in training and testing.
    """

    def __init__(self, backbone: ResNet, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B, 3, H, W) -> logits (B, classes, H, W)
        logits = self.head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)


def build_model(cfg: DictConfig, num_classes: int, load_pretrained: bool = True) -> SegmentationModel:
    """Build the network described by the ``model`` config group.

    ``load_pretrained=False`` skips ImageNet weights, for models about to receive a checkpoint.
    """
    norm_layer = partial(nn.BatchNorm2d, momentum=cfg.bn_momentum)
    try:
        backbone = ResNet(
            depth=cfg.backbone.depth,
            stem=cfg.backbone.stem,
            output_stride=cfg.backbone.output_stride,
            multi_grid=tuple(cfg.backbone.multi_grid),
            width=cfg.backbone.width,
            norm_layer=norm_layer,
        )
        head = build_head(cfg, backbone, num_classes, norm_layer)
    except ValueError as error:  # the modules' own checks, which name the model.* key at fault
        raise ConfigError(str(error)) from None
    if load_pretrained and cfg.backbone.pretrained:
        load_backbone_weights(backbone, cfg.backbone.pretrained, cfg.backbone.depth, cfg.backbone.stem)
    return SegmentationModel(backbone, head)


def build_head(cfg: DictConfig, backbone: ResNet, num_classes: int, norm_layer) -> nn.Module:
    """The head named by ``cfg.head``, sized for ``backbone``."""
    in_channels = backbone.out_channels
    if cfg.head == "ema":
        return EMAHead(
            in_channels=in_channels,
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
    if cfg.head == "fcn":
        return FCNHead(in_channels, num_classes, cfg.channels, cfg.dropout, norm_layer)
    if cfg.head == "deeplabv3":
        return DeepLabV3Head(
            in_channels, num_classes, cfg.aspp.channels, tuple(cfg.aspp.rates), cfg.dropout, norm_layer
        )
    if cfg.head == "deeplabv3plus":
        return DeepLabV3PlusHead(
            in_channels, backbone.low_level_channels, num_classes, cfg.aspp.channels, tuple(cfg.aspp.rates),
            cfg.low_level_projection, cfg.dropout, norm_layer,
        )
    if cfg.head == "psanet":
        return PSAHead(
            in_channels, num_classes, cfg.psa.channels, cfg.psa.attention_size, cfg.mid_channels, cfg.dropout,
            norm_layer,
        )
    if cfg.head == "nonlocal":
        return NonLocalHead(
            in_channels, num_classes, cfg.attention_channels, cfg.mid_channels, cfg.dropout, norm_layer
        )
    raise ValueError(
        f"model.head must be one of ema, fcn, deeplabv3, deeplabv3plus, psanet, nonlocal; got {cfg.head!r}"
    )
