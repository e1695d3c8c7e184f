"""The rectifiers the paper compares: channel-wise PReLU (default), channel-shared PReLU and ReLU.

:class:`PReLU` is ``torch.nn.PReLU`` (same parameter ``weight`` of shape (C,) or (1,), same init, same
forward kernel and ONNX ``PRelu`` export) with a faster backward in eager training. PyTorch's CPU kernel for the
PReLU gradient (``_prelu_kernel_backward``) is not vectorised: for model A at 224 px, one image, one thread, the
rectifier's forward + backward took about 80 ms with it against 7 ms for ReLU, 5-8% of a whole training step,
against the paper's "negligible" (and the project's goal: PReLU within 5% of ReLU). With the backward below
it takes about 20 ms.
The backward here is written with vectorised ops (``threshold_backward``, ``addcmul``, one ``einsum``
reduction for the slopes). It is used only where it wins: CPU tensors of at least ``FAST_BACKWARD_MIN_NUMEL``
elements (below that the Python overhead of a custom autograd function costs more than the kernel saves; GPU
kernels are fine). When tracing, scripting, compiling or exporting, or without gradients, the module is plain
``F.prelu``, so graphs and exports see the standard op.
"""
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['ACTIVATIONS', 'PReLU', 'prelu_fast_backward', 'create_rectifier', 'rectifier_slope']

PRELU_INIT = 0.25
FAST_BACKWARD_MIN_NUMEL = 32768  # measured crossover: 16k elements native wins, 64k the vectorised backward


class _PReLUFunction(torch.autograd.Function):
    """F.prelu with a vectorised backward (same results as PyTorch's, x > 0 takes the identity branch)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x, weight = ctx.saved_tensors
        slope = weight.view(-1, *([1] * (x.dim() - 2))) if weight.numel() > 1 else weight
        pos = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
        neg = grad - pos  # grad where x <= 0, else 0
        grad_x = torch.addcmul(pos, neg, slope) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            if weight.numel() > 1:
                grad_w = torch.einsum('nc...,nc...->c', neg, x)
            else:
                grad_w = torch.einsum('...,...->', neg, x).reshape(1)
        return grad_x, grad_w


def prelu_fast_backward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.prelu(x, weight)`` whose gradient is computed with vectorised ops (see the module docstring)."""
    return _PReLUFunction.apply(x, weight)


class PReLU(nn.PReLU):
    """``nn.PReLU`` with a vectorised backward in eager training; identical parameters, forward and export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.prelu(x, self.weight)
        else:
            if (isinstance(x, torch.fx.Proxy) or not torch.is_grad_enabled() or torch.jit.is_tracing()
                    or torch.compiler.is_compiling() or torch.compiler.is_exporting() or x.device.type != 'cpu'
                    or x.dim() < 2 or x.numel() < FAST_BACKWARD_MIN_NUMEL):
                return F.prelu(x, self.weight)
            return prelu_fast_backward(x, self.weight)


ACTIVATIONS: Dict[str, Callable[[int], nn.Module]] = {
    'prelu': lambda channels: PReLU(num_parameters=channels, init=PRELU_INIT),
    'prelu_shared': lambda channels: PReLU(num_parameters=1, init=PRELU_INIT),
    'relu': lambda channels: nn.ReLU(inplace=True),
}


def create_rectifier(act: str, channels: int) -> nn.Module:
    """The rectifier named ``act`` ('prelu', 'prelu_shared' or 'relu') for a layer of ``channels`` outputs."""
    if act not in ACTIVATIONS:
        raise ValueError(f'unknown act {act!r}: choose one of {sorted(ACTIVATIONS)}')
    return ACTIVATIONS[act](channels)


def rectifier_slope(module: nn.Module) -> float:
    """Negative slope ``a`` of a rectifier module as the init derivation uses it (mean slope for PReLU)."""
    if isinstance(module, nn.PReLU):
        return float(module.weight.detach().mean())
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope)
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return 0.0
    raise TypeError(f'{type(module).__name__} is not a rectifier')
