"""The EMANet segmentation head."""

from __future__ import annotations

import torch
from torch import nn

from emanet.models.ema import EMAUnit
from emanet.models.layers import ConvBNReLU, NormLayer


class EMAHead(nn.Module):
    """3x3 reduction conv -> EMA unit -> 3x3 conv -> Dropout2d -> 1x1 classifier.

    Args:
        in_channels: channels of the backbone's last feature map (2048 for ResNet-50+).
        num_classes: output classes.
        ema_channels: C of the EMA unit (512 for EMANet(512), 256 for EMANet(256)).
        mid_channels: channels of the conv before the classifier (256 in the release).
        num_bases, train_stages, eval_stages, momentum, lambda_, normalize_bases,
        maintenance: see
            :class:`EMAUnit`.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        ema_channels: int = 512,
        mid_channels: int = 256,
        num_bases: int = 64,
        train_stages: int = 3,
        eval_stages: int = 3,
        momentum: float = 0.9,
        lambda_: float = 1.0,
        normalize_bases: bool = True,
        maintenance: str = "moving_average",
        dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.reduce = ConvBNReLU(in_channels, ema_channels, 3, norm_layer=norm_layer)
        self.ema = EMAUnit(
            ema_channels, num_bases, train_stages, eval_stages, momentum, lambda_,
            normalize_bases, maintenance, norm_layer,
        )
        self.fuse = ConvBNReLU(ema_channels, mid_channels, 3, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(mid_channels, num_classes, kernel_size=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.reduce(features["out"])  # (B, C_ema, h, w)
        x = self.ema(x)  # (B, C_ema, h, w)
        x = self.dropout(self.fuse(x))  # (B, mid, h, w)
        return self.classifier(x)  # (B, classes, h, w)
