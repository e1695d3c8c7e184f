"""The rectifiers the paper compares: channel-wise PReLU (default), channel-shared PReLU and ReLU."""
from typing import Callable, Dict

import torch.nn as nn

__all__ = ['ACTIVATIONS', 'create_rectifier', 'rectifier_slope']

PRELU_INIT = 0.25

ACTIVATIONS: Dict[str, Callable[[int], nn.Module]] = {
    'prelu': lambda channels: nn.PReLU(num_parameters=channels, init=PRELU_INIT),
    'prelu_shared': lambda channels: nn.PReLU(num_parameters=1, init=PRELU_INIT),
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
