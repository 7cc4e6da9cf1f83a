"""mmsegmentation's EMAHead: their port of the EMANet head, with its own layout.

How it differs from the release's head (:class:`emanet.models.ema_head.EMAHead`):

* the 1x1 conv in front of the EM iterations has frozen parameters (``requires_grad``
  False) instead of merely receiving no gradient;
* the normalisations are ``F.normalize``'s (divide by ``max(norm, 1e-12)``), not the
  release's ``norm + 1e-6``;
* the moving average of the bases L2-normalises the (all-reduced) batch mean first;
* after the unit comes a 3x3 ``bottleneck`` conv, then, with ``concat_input``, a 3x3 conv
  over the head's input concatenated with it (``conv_cat``), then dropout and ``conv_seg``.

Module names follow mmsegmentation's (``ema_in_conv``, ``ema_mid_conv``, ``ema_module``...)
so that their checkpoints map onto this one key by key (:mod:`emanet.models.mmseg`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from emanet.models.ema import autocast_off, mean_over_processes
from emanet.models.layers import ConvBNReLU, NormLayer


class EMAModule(nn.Module):
    """mmsegmentation's EM attention: T E/M alternations from the stored bases, then the
    low-rank reconstruction; in training, a moving average of the bases.

    Args:
        channels: C.
        num_bases: K.
        train_stages: EM iterations T while training (mmsegmentation's ``num_stages``).
        eval_stages: EM iterations T at evaluation (mmsegmentation uses ``num_stages``).
        momentum: weight of the stored bases in their moving average, the convention of
            ``model.ema.momentum``: 0.9 is mmsegmentation's ``momentum=0.1``, which names
            the weight of the new batch mean instead.
    """

    def __init__(
        self, channels: int, num_bases: int = 64, train_stages: int = 3, eval_stages: int = 3, momentum: float = 0.9
    ) -> None:
        super().__init__()
        if train_stages < 1 or eval_stages < 1:
            raise ValueError(
                f"model.ema.train_stages and model.ema.eval_stages must be at least 1, got {train_stages} and "
                f"{eval_stages}"
            )
        self.train_stages = train_stages
        self.eval_stages = eval_stages
        self.momentum = momentum
        bases = torch.randn(1, channels, num_bases) * math.sqrt(2.0 / num_bases)
        self.register_buffer("bases", F.normalize(bases, dim=1))  # (1, C, K)

    @property
    def stages(self) -> int:
        return self.train_stages if self.training else self.eval_stages

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        # feats: (B, C, H, W) -> reconstruction (B, C, H, W)
        b, c, h, w = feats.shape
        # mmsegmentation runs the iterations without gradient, and its reconstruction from
        # their outputs carries none either. In float32 even under autocast, as the release's
        # unit here: the softmax over long dot products loses too much in half precision.
        em_dtype = torch.promote_types(feats.dtype, torch.float32)
        with torch.no_grad(), autocast_off(feats.device.type):
            x = feats.reshape(b, c, h * w).to(em_dtype)  # (B, C, N)
            bases = self.bases.to(em_dtype).expand(b, -1, -1)  # (B, C, K)
            for _ in range(self.stages):
                attention = torch.softmax(torch.einsum("bcn,bck->bnk", x, bases), dim=2)  # (B, N, K)
                attention_normed = F.normalize(attention, p=1, dim=1)  # (B, N, K), sums to 1 over N
                bases = F.normalize(torch.einsum("bcn,bnk->bck", x, attention_normed), dim=1)  # (B, C, K)
            reconstruction = torch.einsum("bck,bnk->bcn", bases, attention)  # (B, C, N)
        if self.training:
            self._update_bases(bases.mean(dim=0, keepdim=True))
        return reconstruction.reshape(b, c, h, w).to(feats.dtype)

    @torch.no_grad()
    def _update_bases(self, batch_mean: torch.Tensor) -> None:
        # batch_mean: (1, C, K), this process's mean; averaged over every process first
        batch_mean = F.normalize(mean_over_processes(batch_mean), dim=1)
        self.bases.mul_(self.momentum).add_(batch_mean.to(self.bases.dtype), alpha=1.0 - self.momentum)

    def extra_repr(self) -> str:
        return (
            f"num_bases={self.bases.shape[2]}, train_stages={self.train_stages}, "
            f"eval_stages={self.eval_stages}, momentum={self.momentum}"
        )


class MMSegEMAHead(nn.Module):
    """3x3 conv -> frozen 1x1 conv -> EM attention -> ReLU -> 1x1 conv + BN -> residual ->
    ReLU -> 3x3 bottleneck -> (concat with the input, 3x3 conv) -> Dropout2d -> 1x1 classifier.

    Args:
        in_channels: channels of the backbone's last feature map (2048 for ResNet-50+).
        num_classes: output classes.
        ema_channels: C of the EM attention (512 in mmsegmentation's configs).
        channels: output channels of the bottleneck and of ``conv_cat`` (256).
        num_bases, train_stages, eval_stages, momentum: see :class:`EMAModule`.
        concat_input: concatenate the head's input with the bottleneck's output before a
            last 3x3 conv (mmsegmentation's default, True).
        dropout: Dropout2d probability before the classifier.
        norm_layer: normalisation layer constructor.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        ema_channels: int = 512,
        channels: int = 256,
        num_bases: int = 64,
        train_stages: int = 3,
        eval_stages: int = 3,
        momentum: float = 0.9,
        concat_input: bool = True,
        dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.ema_in_conv = ConvBNReLU(in_channels, ema_channels, 3, norm_layer=norm_layer)
        # Maps the ReLU output, in (0, inf), onto (-inf, inf) for the attention; frozen as in
        # mmsegmentation (no gradient could reach it through the no-gradient iterations).
        self.ema_mid_conv = nn.Conv2d(ema_channels, ema_channels, kernel_size=1)
        self.ema_module = EMAModule(ema_channels, num_bases, train_stages, eval_stages, momentum)
        self.ema_out_conv = nn.Sequential(
            nn.Conv2d(ema_channels, ema_channels, kernel_size=1, bias=False), norm_layer(ema_channels)
        )
        self.bottleneck = ConvBNReLU(ema_channels, channels, 3, norm_layer=norm_layer)
        self.conv_cat = (
            ConvBNReLU(in_channels + channels, channels, 3, norm_layer=norm_layer) if concat_input else None
        )
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        # mmsegmentation's initialisation: Kaiming (fan out) convs with zero biases, and a
        # classifier drawn from N(0, 0.01).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        self.ema_mid_conv.requires_grad_(False)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = features["out"]  # (B, C_in, h, w)
        identity = self.ema_in_conv(x)  # (B, C_ema, h, w)
        reconstruction = self.ema_module(self.ema_mid_conv(identity)).relu_()  # (B, C_ema, h, w)
        out = self.ema_out_conv(reconstruction)  # (B, C_ema, h, w)
        # In place: the norm layer keeps its input for backward, not its output.
        out += identity
        out = self.bottleneck(out.relu_())  # (B, channels, h, w)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))  # (B, channels, h, w)
        return self.conv_seg(self.dropout(out))  # (B, classes, h, w)
