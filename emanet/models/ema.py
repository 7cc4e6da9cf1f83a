"""The Expectation-Maximization Attention (EMA) unit.

Semantics follow the authors' release:

* K bases ``mu`` (1, C, K) live in a buffer, initialised from N(0, sqrt(2/K)) and
  L2-normalised over C.
* T alternations of the E step ``Z = softmax(lambda * X^T mu)`` (over K) and the M step
  ``mu = X Z / sum_n Z`` followed by an L2 normalisation of each base, without gradient.
* The reconstruction ``X~ = mu Z^T`` feeds ReLU -> 1x1 conv + BN -> residual -> ReLU.
* In training, ``mu <- m * mu + (1 - m) * mean(mu_T)`` where the mean runs over the whole
  global batch (all processes of a distributed job): after each forward pass, or once per
  optimizer step over all its micro-batches inside :func:`one_bases_update_per_step`.

Because Z and mu come out of the no-gradient iterations, the first 1x1 conv receives no
gradient, exactly as in the release (other ports freeze it explicitly for the same effect).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

NormLayer = Callable[[int], nn.Module]

EPS = 1e-6  # the release's epsilon, in both normalisations


def l2_normalize(bases: torch.Tensor, dim: int) -> torch.Tensor:
    # The release divides by (eps + norm), not max(norm, eps) as F.normalize does.
    return bases / (EPS + bases.norm(dim=dim, keepdim=True))


def random_bases(channels: int, num_bases: int, device=None) -> torch.Tensor:
    """Bases drawn from N(0, sqrt(2/K)) and L2-normalised over channels: (1, C, K)."""
    mu = torch.randn(1, channels, num_bases, device=device) * math.sqrt(2.0 / num_bases)
    return l2_normalize(mu, dim=1)


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast turned off on ``device_type`` for the duration: the EM iterations run in
    float32 even in a mixed-precision step (meta tensors, used to count FLOPs, have no
    autocast to turn off)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def mean_over_processes(batch_mean: torch.Tensor) -> torch.Tensor:
    """``batch_mean``, this process's mean of the bases, averaged in place over every
    process of a distributed job (itself without one): the global batch's mean."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_mean)
        batch_mean /= dist.get_world_size()
    return batch_mean


def em_iterations(
    x: torch.Tensor, mu: torch.Tensor, stages: int, lambda_: float = 1.0, normalize_bases: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``stages`` E/M alternations.

    Args:
        x: features (B, C, N).
        mu: initial bases (B, C, K).
    Returns:
        z: responsibilities after the last E step (B, N, K).
        mu: bases after the last M step (B, C, K).
    """
    if stages < 1:
        raise ValueError(f"the EMA unit needs at least one EM iteration, got {stages}")
    for _ in range(stages):
        z = torch.softmax(lambda_ * torch.bmm(x.transpose(1, 2), mu), dim=2)  # (B, N, K)
        z_over_positions = z / (EPS + z.sum(dim=1, keepdim=True))  # (B, N, K)
        mu = torch.bmm(x, z_over_positions)  # (B, C, K)
        if normalize_bases:
            mu = l2_normalize(mu, dim=1)
    return z, mu


def reconstruct(mu: torch.Tensor, z: torch.Tensor, height: int, width: int, channels_last: bool) -> torch.Tensor:
    """``X~ = mu Z^T`` as a (B, C, H, W) map, laid out channels-last if asked.

    Args:
        mu: bases (B, C, K).
        z: responsibilities (B, N, K), N = height * width.
    """
    b, c, _ = mu.shape
    if channels_last:
        # Z mu^T is (B, N, C), which is the NHWC layout itself: no copy before conv_out.
        return torch.bmm(z, mu.transpose(1, 2)).reshape(b, height, width, c).permute(0, 3, 1, 2)
    return torch.bmm(mu, z.transpose(1, 2)).reshape(b, c, height, width)


class EMAUnit(nn.Module):
    """EMA unit: 1x1 conv -> EM attention -> ReLU -> 1x1 conv + BN -> residual -> ReLU.

    Args:
        channels: input and output channels C.
        num_bases: number of bases K.
        train_stages: EM iterations T while training.
        eval_stages: EM iterations T at evaluation (may differ from ``train_stages``).
        momentum: moving-average momentum of the bases (0.9 in the release).
        lambda_: inverse temperature of the E-step softmax.
        normalize_bases: L2-normalise the bases after each M step.
        maintenance: ``"moving_average"`` (the paper) keeps the bases across steps;
            ``"none"`` (ablation) starts every forward pass from freshly drawn bases.
        norm_layer: normalisation layer after the second 1x1 conv.
    """

    def __init__(
        self,
        channels: int,
        num_bases: int = 64,
        train_stages: int = 3,
        eval_stages: int = 3,
        momentum: float = 0.9,
        lambda_: float = 1.0,
        normalize_bases: bool = True,
        maintenance: str = "moving_average",
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if maintenance not in ("moving_average", "none"):
            raise ValueError(f"model.ema.maintenance must be 'moving_average' or 'none', got {maintenance!r}")
        self.maintenance = maintenance
        self.train_stages = train_stages
        self.eval_stages = eval_stages
        self.momentum = momentum
        self.lambda_ = lambda_
        self.normalize_bases = normalize_bases

        self.register_buffer("mu", random_bases(channels, num_bases))  # (1, C, K)
        self.conv_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.conv_out = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=1, bias=False), norm_layer(channels)
        )
        # Weights as the release initialises them; conv_in's bias keeps PyTorch's default
        # (uniform) initialisation as in the release, and keeps it for good (no gradient).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Its output only feeds the EM iterations, which run without gradient (as in the
        # release), so it never receives one; saying so lets DDP skip it.
        self.conv_in.requires_grad_(False)
        # Batch means of the bases collected inside one_bases_update_per_step (None outside).
        # A plain attribute, not a buffer: DDP would overwrite buffers with rank 0's copy.
        self._collected: list[torch.Tensor] | None = None

    @property
    def stages(self) -> int:
        return self.train_stages if self.training else self.eval_stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W)
        identity = x
        x = self.conv_in(x)
        b, c, h, w = x.shape
        features = x.reshape(b, c, h * w)  # (B, C, N)
        # The iterations are a clustering, not a learned map: the release runs them without
        # gradient, in float32 even under autocast because the softmax over long dot
        # products and the normalisations lose too much precision in half precision.
        em_dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 if given
        if self.maintenance == "moving_average":
            initial = self.mu
        else:
            initial = random_bases(self.mu.shape[1], self.mu.shape[2], device=x.device)
        with torch.no_grad(), autocast_off(x.device.type):
            z, mu = em_iterations(
                features.to(em_dtype), initial.expand(b, -1, -1).to(em_dtype),
                self.stages, self.lambda_, self.normalize_bases,
            )
        if self.training and self.maintenance == "moving_average":
            batch_mean = mu.mean(dim=0, keepdim=True)  # (1, C, K)
            if self._collected is None:
                self._update_bases(batch_mean)
            else:
                self._collected.append(batch_mean)
        with torch.no_grad():  # Z and mu carry no gradient, so neither does X~
            reconstruction = reconstruct(mu, z, h, w, channels_last=x.is_contiguous(memory_format=torch.channels_last))
            reconstruction = reconstruction.to(x.dtype).relu_()
        out = self.conv_out(reconstruction)
        # In place, as torchvision's Bottleneck: the norm layer keeps its input for backward,
        # not its output. Each fresh C x N map is a page-faulting allocation on a CPU.
        out += identity
        return out.relu_()

    @torch.no_grad()
    def _update_bases(self, batch_mean: torch.Tensor) -> None:
        # batch_mean: (1, C, K), this process's mean
        self.mu.mul_(self.momentum).add_(mean_over_processes(batch_mean), alpha=1.0 - self.momentum)

    def extra_repr(self) -> str:
        return (
            f"num_bases={self.mu.shape[2]}, train_stages={self.train_stages}, "
            f"eval_stages={self.eval_stages}, momentum={self.momentum}, lambda_={self.lambda_}, "
            f"normalize_bases={self.normalize_bases}, maintenance={self.maintenance!r}"
        )


@contextlib.contextmanager
def one_bases_update_per_step(model: nn.Module) -> Iterator[None]:
    """Update the bases of every EMA unit in ``model`` once, when the block ends.

    Inside the block each training forward pass only collects the batch mean of its bases;
    on leaving it, each unit moves its bases once towards the mean over all the passes
    (equal-sized micro-batches, so the mean of the global batch across processes too).
    This is the release's update with gradient accumulation: every micro-batch starts from
    the stored bases, and one update per step uses the whole global batch. If the block
    raises (a non-finite loss), the bases stay as they were.
    """
    units = [module for module in model.modules() if isinstance(module, EMAUnit)]
    for unit in units:
        unit._collected = []
    finished = False
    try:
        yield
        finished = True
    finally:
        for unit in units:
            collected, unit._collected = unit._collected, None
            if finished and collected:
                unit._update_bases(torch.stack(collected).mean(dim=0))
