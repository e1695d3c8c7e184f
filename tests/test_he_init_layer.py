"""The He initialiser of one layer: std = sqrt(2 / ((1 + a^2) n)), n = k^2 c (forward) or k^2 d (backward)."""
import math

import pytest
import torch
import torch.nn as nn

from timm_prelu.layers import fan, he_init_layer_, he_normal_, he_std


@pytest.mark.parametrize('n,slope,expected', [
    (27, 0.0, math.sqrt(2 / 27)),  # ReLU
    (4608, 0.25, math.sqrt(2 / (1.0625 * 4608))),  # PReLU at its initial slope, 3x3x512
    (100, 1.0, math.sqrt(1 / 100)),  # linear: the 1/2 factor cancels
])
def test_he_std(n, slope, expected):
    assert he_std(n, slope) == pytest.approx(expected, rel=1e-12)


def test_he_std_rejects_an_empty_fan():
    with pytest.raises(ValueError, match='positive'):
        he_std(0)


def test_fan_of_conv_and_linear_weights():
    conv = torch.empty(64, 32, 3, 5)
    assert fan(conv, 'fan_in') == 32 * 15 and fan(conv, 'fan_out') == 64 * 15
    linear = torch.empty(10, 4096)
    assert fan(linear) == 4096 and fan(linear, 'fan_out') == 10
    with pytest.raises(ValueError, match='conv or linear'):
        fan(torch.empty(8))
    with pytest.raises(ValueError, match="'fan_in' or 'fan_out'"):
        fan(conv, 'fan_avg')


@pytest.mark.parametrize('mode', ['fan_in', 'fan_out'])
@pytest.mark.parametrize('slope', [0.0, 0.25])
def test_he_normal_statistics(mode, slope):
    weight = torch.empty(96, 48, 3, 3, dtype=torch.float64)
    he_normal_(weight, slope=slope, mode=mode, generator=torch.Generator().manual_seed(0))
    expected = he_std(fan(weight, mode), slope)
    tolerance = 5 * expected / math.sqrt(2 * weight.numel())  # 5 standard errors of a sample std
    assert abs(weight.std().item() - expected) < tolerance
    assert abs(weight.mean().item()) < 5 * expected / math.sqrt(weight.numel())


def test_he_normal_is_reproducible_with_a_generator():
    a, b = torch.empty(16, 8), torch.empty(16, 8)
    he_normal_(a, generator=torch.Generator().manual_seed(3))
    he_normal_(b, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize('layer', [nn.Conv2d(8, 16, 3), nn.Linear(32, 4), nn.Conv2d(8, 16, 1, bias=False)],
                         ids=['conv', 'linear', 'conv-no-bias'])
def test_he_init_layer_zeroes_biases(layer):
    torch.manual_seed(0)
    he_init_layer_(layer, slope=0.25)
    if layer.bias is not None:
        assert torch.count_nonzero(layer.bias) == 0
    assert layer.weight.std() > 0
