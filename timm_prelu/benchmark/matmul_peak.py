"""The practical peak: GFLOP/s of a large single-precision matrix multiply on the benchmarked device.

Convolutions are lowered to the same kind of GEMM kernels, so this is the rate a network could reach if it did
nothing but large matrix multiplies; a path's efficiency is its achieved GFLOP/s over this figure.
"""
from typing import Dict

import torch

from .timer import Stats, interleaved, sync_for

__all__ = ['matmul_peak', 'matmul_flops']


def matmul_flops(n: int) -> float:
    """Floating-point operations of an n x n by n x n product (n^3 multiply-adds, 2 flops each)."""
    return 2.0 * n ** 3


def matmul_peak(device: str = 'cpu', n: int = 4096, repeats: int = 5, warmup: int = 2) -> Dict:
    """Time ``a @ b`` for float32 n x n matrices; returns the timing and GFLOP/s of the median and of the best.

    On CUDA the multiply may use TF32 exactly when cuDNN convolutions may (PyTorch's default lets convolutions
    use it but not matmuls), so the peak is that of the arithmetic the networks' convolutions really use.

    Returns:
        dict(n, precision, stats: Stats, gflops (at the median time), gflops_best (at the fastest time)).
    """
    gen = torch.Generator(device='cpu').manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    out = torch.empty(n, n, device=device)
    cuda = str(device).startswith('cuda')
    tf32 = cuda and torch.backends.cudnn.allow_tf32
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        stats: Stats = interleaved({'matmul': lambda: torch.mm(a, b, out=out)}, repeats=repeats, warmup=warmup,
                                   sync=sync_for(device))['matmul']
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    flops = matmul_flops(n)
    return dict(n=n, precision='tf32' if tf32 else 'fp32', stats=stats, gflops=flops / stats.median / 1e9,
                gflops_best=flops / stats.min / 1e9)
