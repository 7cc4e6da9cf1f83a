"""Dilated ResNet backbones for dense prediction.

Three stems are supported:

* ``"deep"``: the ResNet-v1c stem of the EMANet release (three 3x3 convs 64, 64, 128),
  parameter names ``conv1.{0,1,3,4,6}`` and ``bn1`` as in the release's ImageNet weights.
* ``"v1c"``: mmsegmentation's ResNetV1c stem (three 3x3 convs 32, 32, 64, each followed
  by BN and ReLU), parameter names ``stem.{0,1,3,4,6,7}`` as in mmsegmentation's
  checkpoints and ImageNet weights.
* ``"torchvision"``: the classic 7x7 stem; parameter names match torchvision's ``resnet*``
  so that torchvision's ImageNet weights load without renaming.

Blocks put the stride on the 3x3 conv (ResNet v1.5, mmsegmentation's ``style="pytorch"``),
which is what the release, mmsegmentation and torchvision do. The output stride (8 or 16)
is reached by replacing the strides of layer3/layer4 with dilation, following the
release's multi-grid rule; multi-grid factors of 1 give mmsegmentation's "D8" layout
(``contract_dilation=True``: layer3 = 1, 2, 2, ...; layer4 = 2, 4, 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, kernel_size=3, stride=stride,
        padding=dilation, dilation=dilation, bias=False,
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def strided_conv(self) -> nn.Conv2d:
        return self.conv1

    @property
    def dilated_convs(self) -> tuple[nn.Conv2d, ...]:
        return (self.conv1, self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place: the norm layer keeps its input for backward, not its output
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def strided_conv(self) -> nn.Conv2d:
        return self.conv2

    @property
    def dilated_convs(self) -> tuple[nn.Conv2d, ...]:
        return (self.conv2,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


DEPTHS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}

# deep: the release's three 3x3 convs (64-64-128); v1c: mmsegmentation's ResNetV1c (32-32-64);
# torchvision: one 7x7 conv.
STEMS = ("deep", "v1c", "torchvision")


def stage_strides_and_dilations(
    output_stride: int, num_blocks: Sequence[int], multi_grid: Sequence[int]
) -> list[tuple[int, list[int]]]:
    """Stride and per-block dilations of layer1..layer4, following the release.

    A stage whose stride is traded for dilation ``d`` starts with dilation ``d // 2`` (the
    dilation the previous stage ended with, so the first block's receptive field grows
    smoothly) and continues with ``d * multi_grid[i]``; the multi-grid applies to layer4 only.
    OS8 gives layer3 = 1, 2, 2, ... and layer4 = 2, 8, 16; OS16 gives layer4 = 1, 4, 8.
    """
    if output_stride == 8:
        stage_dilation = (1, 1, 2, 4)
    elif output_stride == 16:
        stage_dilation = (1, 1, 1, 2)
    elif output_stride == 32:
        stage_dilation = (1, 1, 1, 1)
    else:
        raise ValueError(f"model.backbone.output_stride must be 8, 16 or 32, got {output_stride}")
    if len(multi_grid) != num_blocks[3]:
        raise ValueError(
            f"model.backbone.multi_grid needs one factor per layer4 block ({num_blocks[3]}), "
            f"got {list(multi_grid)}: set it with the depth ([1,2] for depth 18/34, [1,2,4] for 50/101/152)"
        )
    if multi_grid[0] != 1:
        # The first layer4 block keeps the dilation the previous stage ended with (the release's
        # layout); a factor there would be silently ignored.
        raise ValueError(
            f"model.backbone.multi_grid must start with 1 (layer4's first block takes the dilation of "
            f"layer3's last), got {list(multi_grid)}"
        )
    layout = []
    for stage, (blocks, dilation) in enumerate(zip(num_blocks, stage_dilation, strict=True)):
        stride = 1 if stage == 0 or dilation > 1 else 2
        grid = multi_grid if stage == 3 else [1] * blocks
        if dilation == 1:
            dilations = [1] * blocks
        else:
            dilations = [max(dilation // 2, 1)] + [dilation * g for g in grid[1:]]
        layout.append((stride, dilations))
    return layout


class ResNet(nn.Module):
    """Dilated ResNet returning the feature maps of layer1, layer3 and layer4.

    Args:
        depth: 18, 34, 50, 101 or 152.
        stem: ``"deep"`` (release, 3x3 convs 64-64-128), ``"v1c"`` (mmsegmentation, 3x3
            convs 32-32-64) or ``"torchvision"`` (7x7 conv).
        output_stride: 8, 16 or 32.
        multi_grid: dilation factors of the layer4 blocks (release: 1, 2, 4;
            mmsegmentation's D8 backbones: 1, 1, 1).
        width: channels of the first stage (64 in the standard networks); smaller values
            give narrow networks for quick experiments on a CPU. The deep stem ends with
            ``2 * width`` channels, the others with ``width``.
        norm_layer: normalisation layer constructor (``nn.BatchNorm2d`` or a partial of it).
    """

    def __init__(
        self,
        depth: int = 101,
        stem: str = "deep",
        output_stride: int = 8,
        multi_grid: Sequence[int] = (1, 2, 4),
        width: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"model.backbone.depth must be one of {sorted(DEPTHS)}, got {depth}")
        block, num_blocks = DEPTHS[depth]
        self.depth = depth
        self.num_blocks = num_blocks
        self.multi_grid = tuple(multi_grid)
        self.stem_type = stem

        if stem == "v1c":
            if width % 2:
                raise ValueError(
                    f"model.backbone.width must be even for model.backbone.stem=v1c (its first two convs have "
                    f"width / 2 channels), got {width}"
                )
            stem_channels = width
            self.stem = nn.Sequential(
                conv3x3(3, width // 2, stride=2), norm_layer(width // 2), nn.ReLU(inplace=True),
                conv3x3(width // 2, width // 2), norm_layer(width // 2), nn.ReLU(inplace=True),
                conv3x3(width // 2, width), norm_layer(width), nn.ReLU(inplace=True),
            )
        elif stem == "deep":
            stem_channels = 2 * width
            self.conv1 = nn.Sequential(
                conv3x3(3, width, stride=2), norm_layer(width), nn.ReLU(inplace=True),
                conv3x3(width, width), norm_layer(width), nn.ReLU(inplace=True),
                conv3x3(width, stem_channels),
            )
        elif stem == "torchvision":
            stem_channels = width
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            raise ValueError(f"model.backbone.stem must be 'deep', 'v1c' or 'torchvision', got {stem!r}")
        if stem != "v1c":
            self.bn1 = norm_layer(stem_channels)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = stem_channels
        layout = stage_strides_and_dilations(output_stride, num_blocks, self.multi_grid)
        for index, (blocks, (stride, dilations)) in enumerate(zip(num_blocks, layout, strict=True)):
            planes = width * 2**index
            layer = self._make_layer(block, in_channels, planes, blocks, stride, dilations, norm_layer)
            self.add_module(f"layer{index + 1}", layer)
            in_channels = planes * block.expansion
        self.output_stride = output_stride
        self.out_channels = in_channels  # layer4
        self.layer3_channels = 4 * width * block.expansion  # the auxiliary head reads it
        self.low_level_channels = width * block.expansion  # layer1

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _make_layer(block, in_channels, planes, blocks, stride, dilations, norm_layer) -> nn.Sequential:
        downsample = None
        if stride != 1 or in_channels != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(in_channels, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        layers = [block(in_channels, planes, stride, dilations[0], downsample, norm_layer)]
        for dilation in dilations[1:]:
            layers.append(block(planes * block.expansion, planes, 1, dilation, None, norm_layer))
        return nn.Sequential(*layers)

    def set_output_stride(self, output_stride: int) -> None:
        """Switch between output strides in place, keeping every weight.

        Only strides, dilations and paddings change, so a network trained at OS16 can be
        evaluated at OS8 (the paper's ablation protocol) without reloading its weights.
        """
        layout = stage_strides_and_dilations(output_stride, self.num_blocks, self.multi_grid)
        for layer, (stride, dilations) in zip(
            (self.layer1, self.layer2, self.layer3, self.layer4), layout, strict=True
        ):
            for block_index, (block, dilation) in enumerate(zip(layer, dilations, strict=True)):
                if block_index == 0:
                    block.strided_conv.stride = (stride, stride)
                    if block.downsample is not None:
                        block.downsample[0].stride = (stride, stride)
                for conv in block.dilated_convs:
                    conv.dilation = (dilation, dilation)
                    conv.padding = (dilation, dilation)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # x: (B, 3, H, W)
        x = self.stem(x) if self.stem_type == "v1c" else self.relu(self.bn1(self.conv1(x)))  # (B, stem, H/2, W/2)
        x = self.maxpool(x)  # (B, stem, H/4, W/4)
        low_level = self.layer1(x)  # (B, width*e, H/4, W/4)
        x = self.layer2(low_level)  # (B, 2*width*e, H/8, W/8)
        layer3 = self.layer3(x)  # (B, 4*width*e, H/os', W/os')
        x = self.layer4(layer3)  # (B, 8*width*e, H/os, W/os)
        return {"low_level": low_level, "layer3": layer3, "out": x}
