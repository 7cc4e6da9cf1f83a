"""Random convolution and BatchNorm tensors named as another code base's checkpoint names
them: the checkpoints the importer tests build."""

import math

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
