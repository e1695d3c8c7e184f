"""Spatial pyramid max pooling (He et al., SPP-net, used by the PReLU-nets).

Level n splits each side of length a of a map into n bins; every bin is max-pooled and the bins of all levels are
concatenated. Two binning rules:

* ``'sppnet'``: SPP-net's rule, the one the PReLU-nets were trained with: window ceil(a/n), stride floor(a/n),
  so bin i covers [i floor(a/n), i floor(a/n) + ceil(a/n)). At a = 14, n = 3: rows 0-4, 4-8, 8-12 (row 13 is left
  to the other levels). When a does not divide by n the last a - n floor(a/n) - 1 rows fall outside the level.
  For a map smaller than the level (a < n) the rule's stride is 0 and every bin would be the first row; bins are
  then one row each (the rule's window, ceil(a/n) = 1) spread evenly, bin i = row floor(i a / n), so every row
  lands in some bin.
* ``'adaptive'``: bin i covers [floor(i a / n), ceil((i + 1) a / n)), exactly what ``adaptive_max_pool2d`` does;
  every row of every level is covered.

torch's ONNX exporters cannot export ``adaptive_max_pool2d`` with dynamic height and width, and slicing at
size-dependent offsets makes torch.export guard on the sizes, so bins are masks instead (integer products, no
branch on the size). Max pooling is separable, so each level pools rows, then columns.
"""
from typing import List, Sequence

import torch
import torch.nn as nn

from timm.layers import register_notrace_module

__all__ = ['SpatialPyramidPool', 'spatial_pyramid_pool', 'spp_bin_mask', 'spp_num_bins', 'SPP_BINS']

SPP_BINS = ('sppnet', 'adaptive')


def spp_bin_mask(size: int, n: int, device: torch.device, bins: str = 'sppnet') -> torch.Tensor:
    """(n, size) bool: entry [i, r] says whether position r falls in bin i of a level with n bins."""
    i = torch.arange(n, device=device).unsqueeze(1)
    r = torch.arange(size, device=device).unsqueeze(0)
    if bins == 'adaptive':
        return (i * size < (r + 1) * n) & (r * n < (i + 1) * size)
    if bins == 'sppnet':
        start = i * (size // n)
        sppnet = (r >= start) & (r < start + (size + n - 1) // n)
        one_row = (r * n <= i * size) & (i * size < (r + 1) * n)  # r = floor(i * size / n)
        small = (i * 0 + size) < n  # a tensor: an exported graph keeps both cases instead of guarding on the size
        return (small & one_row) | (~small & sppnet)  # not torch.where: ONNX Runtime has no bool Where
    raise ValueError("unknown SPP binning '" + bins + "': choose 'sppnet' or 'adaptive'")


def _pool_rows(x: torch.Tensor, n: int, bins: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, n, W)"""
    mask = spp_bin_mask(x.shape[-2], n, x.device, bins).unsqueeze(-1)  # (n, H, 1)
    return torch.where(mask, x.unsqueeze(-3), float('-inf')).amax(dim=-2)


def spatial_pyramid_pool(x: torch.Tensor, levels: List[int] = (7, 3, 2, 1), bins: str = 'sppnet') -> torch.Tensor:
    """Max-pool an NCHW map into sum(n*n) bins per channel; returns (N, C * sum(n*n)), level by level.

    ``bins``: 'sppnet' (window ceil(a/n), stride floor(a/n)) or 'adaptive' (as ``adaptive_max_pool2d``).
    """
    outs: List[torch.Tensor] = []
    for n in levels:
        rows = _pool_rows(x, n, bins)  # (B, C, n, W)
        pooled = _pool_rows(rows.transpose(-1, -2), n, bins).transpose(-1, -2)  # (B, C, n, n)
        outs.append(pooled.flatten(1))
    return torch.cat(outs, dim=1)


def spp_num_bins(levels: Sequence[int]) -> int:
    return sum(n * n for n in levels)


@register_notrace_module  # bin masks depend on the input size: FX cannot trace them symbolically
class SpatialPyramidPool(nn.Module):
    """Spatial pyramid max pooling; any map of at least 1 x 1 gives a vector of ``C * num_bins``."""

    def __init__(self, levels: Sequence[int] = (7, 3, 2, 1), bins: str = 'sppnet'):
        super().__init__()
        if bins not in SPP_BINS:
            raise ValueError(f'unknown SPP binning {bins!r}: choose one of {SPP_BINS}')
        self.levels: List[int] = [int(n) for n in levels]
        self.bins = bins
        self.num_bins = spp_num_bins(self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_pyramid_pool(x, self.levels, self.bins)

    def extra_repr(self) -> str:
        return f'levels={self.levels}, bins={self.bins!r}'
