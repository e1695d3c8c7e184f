"""The practical peak: GFLOP/s of a large single-precision matrix multiply on the benchmarked device.

Convolutions are lowered to the same kind of GEMM kernels, so this is the rate a network could reach if it did
nothing but large matrix multiplies; a path's efficiency is its achieved GFLOP/s over this figure.

On a CPU the libraries behind the paths differ a lot: PyTorch's ``torch.mm`` calls MKL, which on AMD CPUs runs
far below the machine's limit (measured here: about half of ONNX Runtime's GEMM), while PyTorch's convolutions run
on oneDNN and ONNX Runtime's on MLAS. So the same n x n product is timed through all three (``torch.mm``, a 1x1
convolution, which oneDNN runs as that GEMM, and an ONNX Runtime ``MatMul``), and the fastest is the peak.
"""
from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F

from .timer import Stats, interleaved, sync_for

__all__ = ['matmul_peak', 'matmul_flops', 'gemm_kernels']


def matmul_flops(n: int) -> float:
    """Floating-point operations of an n x n by n x n product (n^3 multiply-adds, 2 flops each)."""
    return 2.0 * n ** 3


def _onnxruntime_matmul(a: np.ndarray, b: np.ndarray, threads: int) -> Callable[[], object]:
    import onnxruntime as ort
    from onnx import TensorProto, helper
    n = a.shape[0]
    graph = helper.make_graph(
        [helper.make_node('MatMul', ['A', 'B'], ['C'])], 'matmul',
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in ('A', 'B')],
        [helper.make_tensor_value_info('C', TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    binding = session.io_binding()  # inputs bound once: the timed call is the multiply and its output
    binding.bind_cpu_input('A', a)
    binding.bind_cpu_input('B', b)
    binding.bind_output('C')
    return lambda: session.run_with_iobinding(binding)


def gemm_kernels(device: str, n: int, threads: int) -> Dict[str, Callable[[], object]]:
    """The same float32 n x n product through each GEMM library the benchmarked paths use on ``device``."""
    gen = torch.Generator(device='cpu').manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    a_dev, b_dev = a.to(device), b.to(device)
    out = torch.empty(n, n, device=device)
    kernels = {'torch.mm': lambda: torch.mm(a_dev, b_dev, out=out)}
    if str(device).startswith('cuda'):
        return kernels  # cuBLAS serves both matmuls and cuDNN's implicit GEMMs
    # (1, k=n, n, 1) input, (n, n, 1, 1) weight: n output channels x n positions x n inputs = the same n^3
    x = b.t().contiguous().reshape(1, n, n, 1)
    w = a.reshape(n, n, 1, 1)
    kernels['conv 1x1 (oneDNN)'] = lambda: F.conv2d(x, w)
    try:
        kernels['onnxruntime MatMul'] = _onnxruntime_matmul(a.numpy(), b.numpy(), threads)
    except ImportError:  # the onnx extra is not installed: the peak comes from PyTorch's kernels alone
        pass
    return kernels


def matmul_peak(device: str = 'cpu', n: int = 4096, repeats: int = 5, warmup: int = 2,
                threads: int = 0) -> Dict[str, Dict]:
    """Time an n x n float32 product through every kernel of :func:`gemm_kernels`, interleaved.

    On CUDA the multiply may use TF32 exactly when cuDNN convolutions may (PyTorch's default lets convolutions
    use it but not matmuls), so the peak is that of the arithmetic the networks' convolutions really use.

    Returns:
        per kernel: dict(n, precision, stats: Stats, gflops (at the median time), gflops_best (at the fastest)).
    """
    cuda = str(device).startswith('cuda')
    tf32 = cuda and torch.backends.cudnn.allow_tf32
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        kernels = gemm_kernels(device, n, threads or torch.get_num_threads())
        stats: Dict[str, Stats] = interleaved(kernels, repeats=repeats, warmup=warmup, sync=sync_for(device))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    flops = matmul_flops(n)
    return {name: dict(n=n, precision='tf32' if tf32 else 'fp32', stats=s, gflops=flops / s.median / 1e9,
                       gflops_best=flops / s.min / 1e9) for name, s in stats.items()}
