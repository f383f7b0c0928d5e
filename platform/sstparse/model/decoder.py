"""DeepLab-v3+ style decoder: ASPP on the last backbone map, fused with the stride-4 map into pixel features F.

F (``feature_dim`` channels, stride 4) is what every domain head reads, and what the training-only SST modules
pool into class embeddings; the ASPP output is returned too because MSA uses it as a coarser scale.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate, and an image-pooling branch."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout, 1)] +
                                      [_conv_bn_relu(cin, cout, 3, r) for r in rates])
        # No BatchNorm on the pooled 1x1 branch: with one image per worker (common for 512 px crops) BN over a
        # single value per channel is undefined in training; a biased conv does the same job.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = _conv_bn_relu(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabDecoder(nn.Module):
    """ASPP(c5) upsampled to c2's grid, concatenated with a projection of c2, refined by two 3x3 convs."""

    def __init__(self, in_channels: Sequence[int], channels: int, low_level_channels: int, feature_dim: int,
                 rates: Sequence[int]):
        super().__init__()
        self.aspp = ASPP(in_channels[-1], channels, rates)
        self.low = _conv_bn_relu(in_channels[0], low_level_channels, 1)
        self.fuse = nn.Sequential(_conv_bn_relu(channels + low_level_channels, feature_dim, 3),
                                  _conv_bn_relu(feature_dim, feature_dim, 3))
        self.feature_dim = feature_dim
        self.channels = channels

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``feats`` = [c2, c3, c4, c5] -> (pixel features at c2's grid, ASPP output at c5's grid)."""
        c2, c5 = feats[0], feats[-1]
        ctx = self.aspp(c5)
        up = F.interpolate(ctx, size=c2.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([up, self.low(c2)], dim=1)), ctx


