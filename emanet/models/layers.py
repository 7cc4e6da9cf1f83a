"""Small building blocks shared by the segmentation heads."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

NormLayer = Callable[[int], nn.Module]


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> norm -> ReLU, the release's ``ConvBNReLU``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size,
                padding=dilation * (kernel_size // 2), dilation=dilation, bias=False,
            ),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        )
