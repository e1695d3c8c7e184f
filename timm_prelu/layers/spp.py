"""Spatial pyramid max pooling (He et al., SPP-net, used by the PReLU-nets).

Level n splits an H x W map into n x n bins, bin i covering rows floor(i*H/n) to ceil((i+1)*H/n), exactly as
``adaptive_max_pool2d`` does. torch's ONNX exporters cannot export ``adaptive_max_pool2d`` with dynamic height
and width, and slicing at size-dependent offsets makes torch.export guard on the sizes, so bins are masks instead:
row r is in bin i iff i*H < (r+1)*n and r*n < (i+1)*H (integer products, no division). Max pooling is separable,
so each level pools rows, then columns.
"""
from typing import List, Sequence

import torch
import torch.nn as nn

from timm.layers import register_notrace_module

__all__ = ['SpatialPyramidPool', 'spatial_pyramid_pool', 'spp_bin_mask', 'spp_num_bins']


def spp_bin_mask(size: int, n: int, device: torch.device) -> torch.Tensor:
    """(n, size) bool: entry [i, r] says whether position r falls in bin i of a level with n bins."""
    i = torch.arange(n, device=device).unsqueeze(1)
    r = torch.arange(size, device=device).unsqueeze(0)
    return (i * size < (r + 1) * n) & (r * n < (i + 1) * size)


def _pool_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, n, W)"""
    mask = spp_bin_mask(x.shape[-2], n, x.device).unsqueeze(-1)  # (n, H, 1)
    return torch.where(mask, x.unsqueeze(-3), float('-inf')).amax(dim=-2)


def spatial_pyramid_pool(x: torch.Tensor, levels: List[int] = (7, 3, 2, 1)) -> torch.Tensor:
    """Max-pool an NCHW map into sum(n*n) bins per channel; returns (N, C * sum(n*n)), level by level."""
    outs: List[torch.Tensor] = []
    for n in levels:
        rows = _pool_rows(x, n)  # (B, C, n, W)
        pooled = _pool_rows(rows.transpose(-1, -2), n).transpose(-1, -2)  # (B, C, n, n)
        outs.append(pooled.flatten(1))
    return torch.cat(outs, dim=1)


def spp_num_bins(levels: Sequence[int]) -> int:
    return sum(n * n for n in levels)


@register_notrace_module  # bin masks depend on the input size: FX cannot trace them symbolically
class SpatialPyramidPool(nn.Module):
    """Spatial pyramid max pooling; any map of at least 1 x 1 gives a vector of ``C * num_bins``."""

    def __init__(self, levels: Sequence[int] = (7, 3, 2, 1)):
        super().__init__()
        self.levels: List[int] = [int(n) for n in levels]
        self.num_bins = spp_num_bins(self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_pyramid_pool(x, self.levels)

    def extra_repr(self) -> str:
        return f'levels={self.levels}'
