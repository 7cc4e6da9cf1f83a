"""Mixed precision and memory-format settings (``runtime.*`` for training, ``eval.*`` for evaluation)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class AmpSettings:
    """``dtype`` None runs in float32; float16 training comes with a gradient scaler
    (bfloat16 has float32's range and needs none)."""

    dtype: torch.dtype | None = None
    channels_last: bool = False
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))

    @classmethod
    def from_config(cls, section: DictConfig, device: torch.device) -> AmpSettings:
        """From ``section.amp`` and ``section.channels_last`` (``runtime`` or ``eval``)."""
        dtype = AMP_DTYPES[section.amp]
        scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
        return cls(dtype=dtype, channels_last=section.channels_last, scaler=scaler)

    def autocast(self, device: torch.device) -> AbstractContextManager:
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def memory_format(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
