"""The rectifier-aware ("He" / "Kaiming") initialisation derived in He et al., ICCV 2015, section 2.2.

Forward case: 1/2 (1 + a^2) n Var[w] = 1 with n = k^2 c (fan-in), so std = sqrt(2 / ((1 + a^2) n)); the backward
case uses n = k^2 d (fan-out). ``a`` is the negative slope of the rectifier after the layer (0 for ReLU).
"""
import math

import torch
import torch.nn as nn

__all__ = ['he_std', 'fan', 'he_normal_', 'he_init_layer_']


def he_std(n: int, slope: float = 0.0) -> float:
    """std of the zero-mean Gaussian that keeps response (or gradient) variance constant across layers."""
    if n <= 0:
        raise ValueError(f'fan must be positive, got {n}')
    return math.sqrt(2.0 / ((1.0 + slope ** 2) * n))


def fan(weight: torch.Tensor, mode: str = 'fan_in') -> int:
    """n = k^2 c ('fan_in', forward case) or k^2 d ('fan_out', backward case) of a conv or linear weight."""
    if weight.dim() < 2:
        raise ValueError(f'fan needs a conv or linear weight, got shape {tuple(weight.shape)}')
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    if mode == 'fan_in':
        return weight.shape[1] * receptive
    if mode == 'fan_out':
        return weight.shape[0] * receptive
    raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")


@torch.no_grad()
def he_normal_(weight: torch.Tensor, slope: float = 0.0, mode: str = 'fan_in', generator=None) -> torch.Tensor:
    """Fill ``weight`` in place from N(0, he_std(fan(weight, mode), slope)^2)."""
    return weight.normal_(0.0, he_std(fan(weight, mode), slope), generator=generator)


@torch.no_grad()
def he_init_layer_(layer: nn.Module, slope: float = 0.0, mode: str = 'fan_in') -> None:
    """He-initialise one conv / linear layer: Gaussian weights, zero bias."""
    he_normal_(layer.weight, slope=slope, mode=mode)
    if getattr(layer, 'bias', None) is not None:
        layer.bias.zero_()
