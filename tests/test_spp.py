"""Spatial pyramid pooling: exactly adaptive max pooling, at any size, in eager, TorchScript and ONNX Runtime."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timm_prelu.layers import SpatialPyramidPool, spatial_pyramid_pool, spp_bin_mask, spp_num_bins

LEVELS = (7, 3, 2, 1)
# 1x1 up to larger than the 14x14 a 224 px image gives; non-square, prime and smaller-than-the-level sizes.
SIZES = [(1, 1), (1, 5), (4, 1), (2, 2), (3, 7), (6, 6), (7, 7), (8, 8), (9, 13), (14, 14), (15, 15), (17, 29),
         (30, 30), (31, 8)]


def adaptive_reference(x: torch.Tensor, levels=LEVELS) -> torch.Tensor:
    return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in levels], dim=1)


def test_num_bins():
    assert spp_num_bins(LEVELS) == 63
    assert SpatialPyramidPool(LEVELS).num_bins == 63


@pytest.mark.parametrize('size', [1, 2, 5, 7, 14, 29])
@pytest.mark.parametrize('n', [1, 2, 3, 7])
def test_bin_mask_is_the_adaptive_pooling_window(size, n):
    """Bin i covers rows floor(i*size/n) .. ceil((i+1)*size/n) - 1, as adaptive pooling does."""
    mask = spp_bin_mask(size, n, torch.device('cpu'))
    expected = torch.zeros(n, size, dtype=torch.bool)
    for i in range(n):
        expected[i, (i * size) // n:math.ceil((i + 1) * size / n)] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_equals_adaptive_max_pool(size):
    x = torch.randn(2, 5, *size)
    out = spatial_pyramid_pool(x, list(LEVELS))
    assert out.shape == (2, 5 * 63)
    assert torch.equal(out, adaptive_reference(x))


def test_equals_adaptive_max_pool_other_levels_and_dtypes():
    x = torch.randn(1, 3, 11, 6, dtype=torch.float64)
    assert torch.equal(spatial_pyramid_pool(x, [4, 6, 1]), adaptive_reference(x, (4, 6, 1)))
    x = -torch.rand(1, 2, 5, 9).to(torch.bfloat16)  # all negative: the -inf fill must not leak
    assert torch.equal(spatial_pyramid_pool(x, list(LEVELS)), adaptive_reference(x))


@pytest.mark.parametrize('size', [(1, 1), (5, 3), (14, 14), (17, 29)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_gradient_equals_adaptive_max_pool(size):
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    weight = torch.randn(2, 4 * 63, dtype=torch.float64)
    grads = []
    for pool in (lambda t: spatial_pyramid_pool(t, list(LEVELS)), adaptive_reference):
        leaf = x.clone().requires_grad_()
        (pool(leaf) * weight).sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


def test_torchscript():
    pool = torch.jit.script(SpatialPyramidPool(LEVELS))
    for size in [(1, 1), (9, 13), (14, 14)]:
        x = torch.randn(1, 3, *size)
        assert torch.equal(pool(x), adaptive_reference(x))


def test_onnx_export_with_dynamic_height_and_width(tmp_path):
    import onnxruntime as ort
    path = tmp_path / 'spp.onnx'
    dims = dict(batch=torch.export.Dim('batch', min=1, max=64), height=torch.export.Dim('height', min=1, max=1024),
                width=torch.export.Dim('width', min=1, max=1024))
    program = torch.onnx.export(
        SpatialPyramidPool(LEVELS).eval(), (torch.randn(2, 3, 9, 13),), dynamo=True, verbose=False,
        input_names=['x'], output_names=['bins'],
        dynamic_shapes={'x': {0: dims['batch'], 2: dims['height'], 3: dims['width']}})
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for shape in [(1, 3, 1, 1), (3, 3, 5, 2), (1, 3, 14, 14), (2, 3, 23, 31), (1, 3, 60, 7)]:
        x = torch.randn(*shape)
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert np.array_equal(out, adaptive_reference(x).numpy()), shape
