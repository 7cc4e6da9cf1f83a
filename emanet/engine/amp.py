"""Mixed precision and memory-format settings of a training run (``runtime.*``)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from emanet.errors import ConfigError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class AmpSettings:
    """``dtype`` None trains in float32; float16 comes with a gradient scaler (bfloat16
    has float32's range and needs none)."""

    dtype: torch.dtype | None = None
    channels_last: bool = False
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))

    @classmethod
    def from_config(cls, runtime: DictConfig, device: torch.device) -> AmpSettings:
        name = "off" if runtime.amp is False else runtime.amp  # YAML reads a bare off as false
        if name not in AMP_DTYPES:
            raise ConfigError(f"runtime.amp must be one of {sorted(AMP_DTYPES)}, got {runtime.amp!r}")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = runtime.cudnn_benchmark
        dtype = AMP_DTYPES[name]
        scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
        return cls(dtype=dtype, channels_last=runtime.channels_last, scaler=scaler)

    def autocast(self, device: torch.device) -> AbstractContextManager:
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)
