"""Random convolution and BatchNorm tensors named as another code base's checkpoint names
them: the checkpoints the importer tests build."""

import math
from collections.abc import Callable, Sequence

import torch


class RandomWeights:
    """A state dict filled layer by layer from one seeded generator; BatchNorms record
    ``batches_tracked`` batches, as a trained checkpoint's do."""

    def __init__(self, seed: int, batches_tracked: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.state: dict[str, torch.Tensor] = {}
        self.batches_tracked = batches_tracked

    def conv(self, name: str, out_channels: int, in_channels: int, kernel: int, bias: bool = False) -> None:
        std = math.sqrt(2 / (kernel * kernel * out_channels))  # He init: activations of a usable scale
        weight = torch.randn(out_channels, in_channels, kernel, kernel, generator=self.generator)
        self.state[f"{name}.weight"] = weight * std
        if bias:
            self.state[f"{name}.bias"] = 0.1 * torch.randn(out_channels, generator=self.generator)

    def bn(self, name: str, channels: int) -> None:
        self.state[f"{name}.weight"] = 0.5 + torch.rand(channels, generator=self.generator)
        self.state[f"{name}.bias"] = 0.1 * torch.randn(channels, generator=self.generator)
        self.state[f"{name}.running_mean"] = 0.1 * torch.randn(channels, generator=self.generator)
        self.state[f"{name}.running_var"] = 0.5 + torch.rand(channels, generator=self.generator)
        self.state[f"{name}.num_batches_tracked"] = torch.tensor(self.batches_tracked)

    def bottleneck_stages(
        self, stage_name: Callable[[int], str], in_channels: int, width: int, blocks: Sequence[int]
    ) -> int:
        """A ResNet's four stages of bottleneck blocks, stage i (from 0) named ``stage_name(i)``
        and its blocks' layers as torchvision names them; returns the channels out."""
        for stage, count in enumerate(blocks):
            planes = width * 2**stage
            for block in range(count):
                prefix = f"{stage_name(stage)}.{block}"
                self.conv(f"{prefix}.conv1", planes, in_channels, 1)
                self.bn(f"{prefix}.bn1", planes)
                self.conv(f"{prefix}.conv2", planes, planes, 3)
                self.bn(f"{prefix}.bn2", planes)
                self.conv(f"{prefix}.conv3", 4 * planes, planes, 1)
                self.bn(f"{prefix}.bn3", 4 * planes)
                if block == 0:
                    self.conv(f"{prefix}.downsample.0", 4 * planes, in_channels, 1)
                    self.bn(f"{prefix}.downsample.1", 4 * planes)
                in_channels = 4 * planes
        return in_channels
