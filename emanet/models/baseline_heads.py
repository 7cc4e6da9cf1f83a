"""The baseline heads of the paper's Table 1, on the same backbone and interface as EMAHead.

Each head takes the backbone's feature dict (``out``: layer4, ``low_level``: layer1) and
returns logits at the feature resolution (layer1 resolution for DeepLabV3+).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emanet.models.layers import ConvBNReLU, NormLayer


class FCNHead(nn.Module):
    """3x3 conv -> Dropout2d -> 1x1 classifier: the dilated-FCN baseline on ``features["out"]``,
    or, with ``in_feature="layer3"``, the auxiliary head of mmsegmentation's recipes."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 512, dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d, in_feature: str = "out",
    ) -> None:
        super().__init__()
        self.in_feature = in_feature
        self.conv = ConvBNReLU(in_channels, channels, 3, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(features[self.in_feature])))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling, 1x1 projection."""

    def __init__(
        self, in_channels: int, channels: int = 256, rates: tuple[int, ...] = (12, 24, 36),
        dropout: float = 0.1, norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1, norm_layer=norm_layer)]
            + [ConvBNReLU(in_channels, channels, 3, dilation=rate, norm_layer=norm_layer) for rate in rates]
        )
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1, norm_layer=norm_layer)
        )
        self.project = nn.Sequential(
            ConvBNReLU((len(rates) + 2) * channels, channels, 1, norm_layer=norm_layer), nn.Dropout2d(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, h, w) -> (B, channels, h, w)
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DeepLabV3Head(nn.Module):
    """ASPP -> 1x1 classifier."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 256, rates: tuple[int, ...] = (12, 24, 36),
        dropout: float = 0.1, norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, channels, rates, dropout, norm_layer)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.aspp(features["out"]))


class DeepLabV3PlusHead(nn.Module):
    """ASPP, upsampled to layer1 and fused with its 48-channel projection by two 3x3 convs."""

    def __init__(
        self, in_channels: int, low_level_channels: int, num_classes: int, channels: int = 256,
        rates: tuple[int, ...] = (12, 24, 36), low_level_projection: int = 48, dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, channels, rates, dropout, norm_layer)
        self.low_level = ConvBNReLU(low_level_channels, low_level_projection, 1, norm_layer=norm_layer)
        self.decoder = nn.Sequential(
            ConvBNReLU(channels + low_level_projection, channels, 3, norm_layer=norm_layer),
            ConvBNReLU(channels, channels, 3, norm_layer=norm_layer),
        )
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low_level = self.low_level(features["low_level"])  # (B, 48, H/4, W/4)
        x = F.interpolate(
            self.aspp(features["out"]), size=low_level.shape[-2:], mode="bilinear", align_corners=True
        )
        return self.classifier(self.decoder(torch.cat([x, low_level], dim=1)))


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block: O(N^2 C) pairwise attention over all positions."""

    def __init__(self, channels: int, reduction: int = 2, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        inner = channels // reduction
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.out = nn.Sequential(nn.Conv2d(inner, channels, kernel_size=1, bias=False), norm_layer(channels))
        nn.init.zeros_(self.out[1].weight)  # starts as identity, as in the non-local paper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        key = self.phi(x).flatten(2)  # (B, C', N)
        value = self.g(x).flatten(2).transpose(1, 2)  # (B, N, C')
        attention = torch.softmax(torch.bmm(query, key), dim=-1)  # (B, N, N)
        y = torch.bmm(attention, value).transpose(1, 2).reshape(b, -1, h, w)  # (B, C', H, W)
        return x + self.out(y)


class NonLocalHead(nn.Module):
    """The EMA head with its unit replaced by a non-local block (same widths)."""

    def __init__(
        self, in_channels: int, num_classes: int, attention_channels: int = 512, mid_channels: int = 256,
        dropout: float = 0.1, norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.reduce = ConvBNReLU(in_channels, attention_channels, 3, norm_layer=norm_layer)
        self.non_local = NonLocalBlock(attention_channels, norm_layer=norm_layer)
        self.fuse = ConvBNReLU(attention_channels, mid_channels, 3, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(mid_channels, num_classes, kernel_size=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.non_local(self.reduce(features["out"]))
        return self.classifier(self.dropout(self.fuse(x)))


def point_wise_attention_index(height: int, width: int, device=None) -> torch.Tensor:
    """Indices that turn PSANet's over-complete maps into position-pair attention.

    Position p = (h, w) predicts a (2H-1) x (2W-1) map centred on itself; the weight it
    gives to position q = (y, x) sits at offset (y - h + H - 1, x - w + W - 1). Returns a
    (N, N) index into the flattened map, rows q and columns p. This is the ``psa_mask``
    operator of the PSANet release, written with ``gather`` so it needs no compiled op.
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    ys, xs = ys.flatten(), xs.flatten()  # (N,)
    dy = ys[:, None] - ys[None, :] + height - 1  # (N_q, N_p)
    dx = xs[:, None] - xs[None, :] + width - 1
    return dy * (2 * width - 1) + dx


class PointWiseSpatialAttention(nn.Module):
    """One PSANet branch: ``collect`` (each position gathers) or ``distribute`` (each sends).

    Features are reduced at full resolution, then attention runs on a fixed ``size`` x
    ``size`` grid (PSANet's shrink step), where each position predicts a (2s-1) x (2s-1) map.
    The grid is fixed because the width of those maps, (2s-1)^2 output channels of the
    attention conv, is fixed when the head is built: resizing every feature map to s x s
    (bilinear, as the release shrinks its features) lets one head serve any input size
    (whole images, multi-scale evaluation) and keeps the N^2 attention small.

    As in the PSANet release's default (``psa_softmax=True``, normalisation factor 1), the
    attention each target position gives the source positions is a softmax over the
    sources, in both branches.
    """

    def __init__(
        self, in_channels: int, channels: int, size: int, mode: str, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        if mode not in ("collect", "distribute"):
            raise ValueError(f"mode must be 'collect' or 'distribute', got {mode!r}")
        self.mode = mode
        self.size = size
        self.reduce = ConvBNReLU(in_channels, channels, 1, norm_layer=norm_layer)
        self.attention = nn.Sequential(
            ConvBNReLU(channels, channels, 1, norm_layer=norm_layer),
            nn.Conv2d(channels, (2 * size - 1) ** 2, kernel_size=1),
        )
        self.register_buffer("index", point_wise_attention_index(size, size), persistent=False)

    def attention_weights(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N_source, N_target) weights from features on the s x s grid; each column sums to 1.

        ``collect``: target p weighs source q by entry q - p of p's own map. ``distribute``:
        by entry p - q of q's map (what q sends to p). Either way the softmax runs over the
        sources q (dim 1), as the release's ``softmax(psa_mask(y), dim=1)``.
        """
        b = features.shape[0]
        maps = self.attention(features).flatten(2)  # (B, (2s-1)^2, N)
        logits = torch.gather(maps, 1, self.index.unsqueeze(0).expand(b, -1, -1))  # (B, N_q, N_p)
        if self.mode == "distribute":
            logits = logits.transpose(1, 2)  # [a, b]: entry b - a of a's map, source a, target b
        return torch.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.reduce(x)  # (B, C, h, w)
        # the fixed s x s grid that the (2s-1)^2 maps are sized for (see the class docstring)
        features = F.interpolate(features, size=(self.size, self.size), mode="bilinear", align_corners=True)
        b, c, s, _ = features.shape
        attention = self.attention_weights(features)  # (B, N_q, N_p)
        # out[:, :, p] = sum_q attention[q, p] * features[:, :, q]
        return torch.bmm(features.flatten(2), attention).reshape(b, c, s, s)  # (B, C, s, s)


class PSAHead(nn.Module):
    """PSANet (bi-directional point-wise spatial attention), in plain PyTorch.

    Collect and distribute branches at ``attention_size`` (33 for 513 crops at output
    stride 8, i.e. the features shrunk by two), concatenated, projected back to the input
    width, upsampled, added to the input features and fused by a 3x3 conv. Adding rather
    than concatenating the input (as some ports do) is the variant whose size matches the
    paper's Table 1 (+18.5 M parameters).
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 512, attention_size: int = 33,
        mid_channels: int = 512, dropout: float = 0.1, norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.collect = PointWiseSpatialAttention(in_channels, channels, attention_size, "collect", norm_layer)
        self.distribute = PointWiseSpatialAttention(in_channels, channels, attention_size, "distribute", norm_layer)
        self.project = ConvBNReLU(2 * channels, in_channels, 1, norm_layer=norm_layer)
        self.fuse = ConvBNReLU(in_channels, mid_channels, 3, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(mid_channels, num_classes, kernel_size=1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = features["out"]  # (B, C_in, h, w)
        attended = self.project(torch.cat([self.collect(x), self.distribute(x)], dim=1))  # (B, C_in, s, s)
        attended = F.interpolate(attended, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.dropout(self.fuse(x + attended)))
