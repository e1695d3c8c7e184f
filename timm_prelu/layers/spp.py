"""Spatial pyramid max pooling (He et al., SPP-net, used by the PReLU-nets).

Level n splits each side of length a of a map into n bins; every bin is max-pooled and the bins of all levels are
concatenated. The PReLU paper says its SPP follows SPP-net and states no binning rule, so both rules are readings:

* ``'sppnet'`` (the default): the fixed-size rule SPP-net's paper states for its training: window ceil(a/n),
  stride floor(a/n), so bin i covers [i floor(a/n), i floor(a/n) + ceil(a/n)). At a = 14, n = 3: rows 0-4, 4-8,
  8-12 (row 13 is left to the other levels). When a does not divide by n the last a - n floor(a/n) - 1 rows fall
  outside the level. For a map smaller than the level (a < n) the rule's stride is 0 and every bin would be the
  first row; bins are then one row each (the rule's window, ceil(a/n) = 1) spread evenly, bin i = row
  floor(i a / n), so every row lands in some bin.
* ``'adaptive'``: bin i covers [floor(i a / n), ceil((i + 1) a / n)), exactly what ``adaptive_max_pool2d`` does;
  every row of every level is covered. SPP-net's own pooling code for multi-view testing bins adaptively.

torch's ONNX exporters cannot export ``adaptive_max_pool2d`` with dynamic height and width, and slicing at
size-dependent offsets makes torch.export guard on the sizes. So each level gathers the rows of its bins, bin after
bin, padded to the longest bin by repeating the bin's last row, and takes the max over each bin's rows: a Gather
and a ReduceMax on a reshaped view, integer index arithmetic on the sizes and no branch on them. Max pooling is
separable, so each level pools rows, then columns. Every runtime tried (ONNX Runtime, OpenVINO, ``onnx.reference``)
runs the exported graph with dynamic height and width.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from timm.layers import register_notrace_module

__all__ = ['SpatialPyramidPool', 'spatial_pyramid_pool', 'spp_bin_bounds', 'spp_bin_mask', 'spp_num_bins',
           'SPP_BINS']

SPP_BINS = ('sppnet', 'adaptive')


def spp_bin_bounds(size: int, n: int, device: torch.device, bins: str = 'sppnet') -> Tuple[torch.Tensor, torch.Tensor]:
    """(start, stop), each (n,) int64: bin i of a level with n bins covers positions [start[i], stop[i])."""
    i = torch.arange(n, device=device)
    if bins == 'adaptive':
        return (i * size) // n, ((i + 1) * size + n - 1) // n
    if bins == 'sppnet':
        # a map smaller than the level (stride size // n = 0): one row per bin, row floor(i * size / n); the test
        # is a tensor so an exported graph keeps both cases instead of guarding on the size
        small = ((i[:1] * 0 + size) < n).to(i.dtype)
        start = i * (size // n) + small * ((i * size) // n)
        return start, start + (size + n - 1) // n  # window ceil(size / n), 1 when size < n
    raise ValueError("unknown SPP binning '" + bins + "': choose 'sppnet' or 'adaptive'")


def spp_bin_mask(size: int, n: int, device: torch.device, bins: str = 'sppnet') -> torch.Tensor:
    """(n, size) bool: entry [i, r] says whether position r falls in bin i of a level with n bins."""
    start, stop = spp_bin_bounds(size, n, device, bins)
    r = torch.arange(size, device=device).unsqueeze(0)
    return (r >= start.unsqueeze(1)) & (r < stop.unsqueeze(1))


def _pool_dim(x: torch.Tensor, n: int, bins: str, dim: int) -> torch.Tensor:
    """Max over each of the n bins along ``dim`` (0 or 1 of an (H, W, B, C) map): size a there becomes n."""
    size = x.shape[dim]
    start, stop = spp_bin_bounds(size, n, x.device, bins)
    longest = (size + n - 1) // n + (1 if bins == 'adaptive' else 0)  # no bin of either rule is longer
    offsets = torch.arange(longest, device=x.device)
    index = torch.minimum(start.unsqueeze(1) + offsets, stop.unsqueeze(1) - 1)  # (n, longest): repeats are harmless
    rows = x.index_select(dim, index.flatten())
    if dim == 0:
        return rows.reshape(n, longest, x.shape[1], x.shape[2], x.shape[3]).amax(dim=1)
    return rows.reshape(x.shape[0], n, longest, x.shape[2], x.shape[3]).amax(dim=2)


def spatial_pyramid_pool(x: torch.Tensor, levels: List[int] = (7, 3, 2, 1), bins: str = 'sppnet') -> torch.Tensor:
    """Max-pool an NCHW map into sum(n*n) bins per channel; returns (N, C * sum(n*n)), level by level.

    ``bins``: 'sppnet' (window ceil(a/n), stride floor(a/n)) or 'adaptive' (as ``adaptive_max_pool2d``).
    """
    # (H, W, B, C): a gathered row or column is then one contiguous block, and the reductions run over outer axes
    hwbc = x.permute(2, 3, 0, 1)
    outs: List[torch.Tensor] = []
    for n in levels:
        if n == 1:  # one bin: the whole map under either rule
            outs.append(x.amax(dim=(-2, -1)))
            continue
        pooled = _pool_dim(_pool_dim(hwbc, n, bins, 0), n, bins, 1)  # (n, W, B, C), then (n, n, B, C)
        outs.append(pooled.permute(2, 3, 0, 1).flatten(1))
    return torch.cat(outs, dim=1)


def spp_num_bins(levels: Sequence[int]) -> int:
    return sum(n * n for n in levels)


@register_notrace_module  # bin bounds depend on the input size: FX cannot trace them symbolically
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
