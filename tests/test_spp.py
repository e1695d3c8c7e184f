"""Spatial pyramid pooling, both binning rules, at any size, in eager, TorchScript, and exported to ONNX in ONNX
Runtime, OpenVINO and onnx.reference.

'sppnet' is checked against a plain-Python loop over SPP-net's windows (ceil(a/n) wide, floor(a/n) apart), 'adaptive'
against torch's adaptive_max_pool2d.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timm_prelu.layers import SpatialPyramidPool, spatial_pyramid_pool, spp_bin_mask, spp_num_bins

from runtimes import RUNTIMES, load

LEVELS = (7, 3, 2, 1)
# 1x1 up to larger than the 14x14 a 224 px image gives; non-square, prime and smaller-than-the-level sizes.
SIZES = [(1, 1), (1, 5), (4, 1), (2, 2), (3, 7), (6, 6), (7, 7), (8, 8), (9, 13), (14, 14), (15, 15), (17, 29),
         (30, 30), (31, 8)]


def adaptive_reference(x: torch.Tensor, levels=LEVELS) -> torch.Tensor:
    return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in levels], dim=1)


def sppnet_bin(a: int, n: int, i: int) -> range:
    """Rows of bin i: SPP-net's window ceil(a/n) at stride floor(a/n); a map smaller than the level (a < n, stride 0)
    gets one row per bin, spread evenly: row floor(i a / n)."""
    if a < n:
        return range(i * a // n, i * a // n + 1)
    stride, window = a // n, -(-a // n)
    return range(i * stride, i * stride + window)


def sppnet_reference(x: torch.Tensor, levels=LEVELS) -> np.ndarray:
    """Max over each bin's window, one bin at a time, in numpy."""
    x = x.numpy()
    out = []
    for n in levels:
        level = np.empty(x.shape[:2] + (n, n), dtype=x.dtype)
        for i in range(n):
            for j in range(n):
                rows, cols = sppnet_bin(x.shape[2], n, i), sppnet_bin(x.shape[3], n, j)
                level[:, :, i, j] = x[:, :, rows.start:rows.stop, cols.start:cols.stop].max(axis=(2, 3))
        out.append(level.reshape(x.shape[0], -1))
    return np.concatenate(out, axis=1)


def reference(x: torch.Tensor, bins: str, levels=LEVELS) -> torch.Tensor:
    return torch.from_numpy(sppnet_reference(x, levels)) if bins == 'sppnet' else adaptive_reference(x, levels)


def test_num_bins():
    assert spp_num_bins(LEVELS) == 63
    assert SpatialPyramidPool(LEVELS).num_bins == 63


def test_sppnet_bins_at_14_are_the_papers():
    """The paper's example: at 14 x 14 the 3-level bins are rows 0-4, 4-8, 8-12 (adaptive: 0-4, 4-9, 9-13)."""
    rows = lambda mask: [(int(r.nonzero().min()), int(r.nonzero().max())) for r in mask]
    assert rows(spp_bin_mask(14, 3, torch.device('cpu'), 'sppnet')) == [(0, 4), (4, 8), (8, 12)]
    assert rows(spp_bin_mask(14, 3, torch.device('cpu'), 'adaptive')) == [(0, 4), (4, 9), (9, 13)]
    assert rows(spp_bin_mask(14, 7, torch.device('cpu'), 'sppnet')) == [(2 * i, 2 * i + 1) for i in range(7)]
    # a map smaller than the level: one row per bin, every row used
    assert rows(spp_bin_mask(2, 7, torch.device('cpu'), 'sppnet')) == [(0, 0)] * 4 + [(1, 1)] * 3
    assert rows(spp_bin_mask(5, 7, torch.device('cpu'), 'sppnet')) == [(r, r) for r in (0, 0, 1, 2, 2, 3, 4)]


@pytest.mark.parametrize('size', [1, 2, 5, 7, 13, 14, 15, 29])
@pytest.mark.parametrize('n', [1, 2, 3, 6, 7])
def test_bin_mask_is_the_rules_window(size, n):
    """sppnet: the reference's rows; adaptive: rows floor(i*size/n) .. ceil((i+1)*size/n) - 1."""
    for bins in ('sppnet', 'adaptive'):
        expected = torch.zeros(n, size, dtype=torch.bool)
        for i in range(n):
            if bins == 'sppnet':
                rows = sppnet_bin(size, n, i)
                expected[i, rows.start:rows.stop] = True
            else:
                expected[i, (i * size) // n:math.ceil((i + 1) * size / n)] = True
        assert torch.equal(spp_bin_mask(size, n, torch.device('cpu'), bins), expected), bins


# 13, 14, 15 and 29 px maps (and mixed), plus maps smaller than the 7- and 3-levels' bin counts
REFERENCE_SIZES = [(13, 13), (14, 14), (15, 15), (29, 29), (13, 29), (15, 14), (29, 2), (1, 1), (2, 2), (5, 6),
                   (3, 14), (6, 6)]


@pytest.mark.parametrize('size', REFERENCE_SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_sppnet_equals_the_reference_loop(size):
    x = torch.randn(2, 5, *size)
    out = spatial_pyramid_pool(x, list(LEVELS), 'sppnet')
    assert out.shape == (2, 5 * 63)
    assert torch.equal(out, reference(x, 'sppnet'))


def test_the_rules_differ_where_the_paper_says():
    """At 14 x 14 only the 3-level differs (7, 2 and 1 divide 14): row 13 is in no SPP-net 3-level bin."""
    x = torch.randn(1, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    x[..., 13, :] = 100 + x[..., 13, :].abs()  # row 13, above 100 everywhere: outside every SPP-net 3-level bin
    sppnet, adaptive = spatial_pyramid_pool(x, [3], 'sppnet'), spatial_pyramid_pool(x, [3], 'adaptive')
    assert torch.equal(sppnet.reshape(3, 3)[2], torch.from_numpy(sppnet_reference(x, [3])).reshape(3, 3)[2])
    assert (adaptive.reshape(3, 3)[2] >= 100).all() and (sppnet < 100).all()
    for n in (7, 2, 1):
        assert torch.equal(spatial_pyramid_pool(x, [n], 'sppnet'), spatial_pyramid_pool(x, [n], 'adaptive'))
    cpu = torch.device('cpu')
    differ = lambda a: [n for n in LEVELS if not torch.equal(spp_bin_mask(a, n, cpu, 'sppnet'),
                                                             spp_bin_mask(a, n, cpu, 'adaptive'))]
    assert (differ(13), differ(14), differ(15), differ(29)) == ([7], [3], [], [3])


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_adaptive_equals_adaptive_max_pool(size):
    x = torch.randn(2, 5, *size)
    out = spatial_pyramid_pool(x, list(LEVELS), 'adaptive')
    assert out.shape == (2, 5 * 63)
    assert torch.equal(out, adaptive_reference(x))


@pytest.mark.parametrize('bins', ['sppnet', 'adaptive'])
def test_other_levels_and_dtypes(bins):
    x = torch.randn(1, 3, 11, 6, dtype=torch.float64)
    assert torch.equal(spatial_pyramid_pool(x, [4, 6, 1], bins), reference(x, bins, (4, 6, 1)))
    x = -torch.rand(1, 2, 5, 9).to(torch.bfloat16)  # all negative: the -inf fill must not leak
    expected = reference(x.float(), bins).to(torch.bfloat16)
    assert torch.equal(spatial_pyramid_pool(x, list(LEVELS), bins), expected)


@pytest.mark.parametrize('bins', ['sppnet', 'adaptive'])
@pytest.mark.parametrize('size', [(1, 1), (5, 3), (14, 14), (17, 29)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_gradient_reaches_each_bins_maximum(size, bins):
    """d out / d x: each bin's weight lands on its maximum (sum over the bins that share it)."""
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    weight = torch.randn(2, 4 * 63, dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    (spatial_pyramid_pool(leaf, list(LEVELS), bins) * weight).sum().backward()
    if bins == 'adaptive':
        leaf2 = x.clone().requires_grad_()
        (adaptive_reference(leaf2) * weight).sum().backward()
        expected = leaf2.grad
    else:
        expected = _sppnet_grad(x, weight)
    torch.testing.assert_close(leaf.grad, expected, rtol=0, atol=1e-12)


def _sppnet_grad(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The gradient of sum(sppnet_pool(x) * weight), by hand: each bin adds its weight at its argmax."""
    grad = torch.zeros_like(x)
    offset = 0
    channels = x.shape[1]
    for n in LEVELS:
        for b in range(x.shape[0]):
            for c in range(channels):
                for i in range(n):
                    for j in range(n):
                        rows, cols = sppnet_bin(x.shape[2], n, i), sppnet_bin(x.shape[3], n, j)
                        window = x[b, c, rows.start:rows.stop, cols.start:cols.stop]
                        r, q = divmod(int(window.argmax()), window.shape[1])
                        grad[b, c, rows.start + r, cols.start + q] += weight[b, offset + c * n * n + i * n + j]
        offset += channels * n * n
    return grad


@pytest.mark.parametrize('bins', ['sppnet', 'adaptive'])
def test_torchscript(bins):
    pool = torch.jit.script(SpatialPyramidPool(LEVELS, bins))
    for size in [(1, 1), (9, 13), (14, 14), (2, 29)]:
        x = torch.randn(1, 3, *size)
        assert torch.equal(pool(x), reference(x, bins))


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="unknown SPP binning 'floor'"):
        SpatialPyramidPool(LEVELS, 'floor')


@pytest.fixture(scope='module')
def spp_onnx(tmp_path_factory):
    """The SPP alone exported with dynamic batch / height / width, one file per binning rule."""
    root = tmp_path_factory.mktemp('spp-onnx')
    dims = dict(batch=torch.export.Dim('batch', min=1, max=64), height=torch.export.Dim('height', min=1, max=1024),
                width=torch.export.Dim('width', min=1, max=1024))
    paths = {}
    for bins in ('sppnet', 'adaptive'):
        program = torch.onnx.export(
            SpatialPyramidPool(LEVELS, bins).eval(), (torch.randn(2, 3, 9, 13),), dynamo=True, verbose=False,
            input_names=['x'], output_names=['bins'],
            dynamic_shapes={'x': {0: dims['batch'], 2: dims['height'], 3: dims['width']}})
        paths[bins] = tmp_path_factory.mktemp(bins) / 'spp.onnx'
        program.save(str(paths[bins]))
    return paths


@pytest.mark.parametrize('runtime', RUNTIMES)
@pytest.mark.parametrize('bins', ['sppnet', 'adaptive'])
def test_onnx_export_with_dynamic_height_and_width(spp_onnx, bins, runtime):
    """One compiled graph, every size: bit for bit the rule's bins in each runtime."""
    run = load(spp_onnx[bins], runtime)
    # maps smaller, equal and larger than each level, the 13 / 14 / 15 / 29 px of the reference
    for shape in [(1, 3, 1, 1), (3, 3, 5, 2), (1, 3, 13, 13), (1, 3, 14, 14), (1, 3, 15, 29), (2, 3, 23, 31),
                  (1, 3, 60, 7)]:
        x = torch.randn(*shape)
        out = run(x.numpy())
        assert np.array_equal(out, reference(x, bins).numpy()), shape


def test_onnx_graph_has_no_bin_masks(spp_onnx):
    """Bins are gathered rows reduced on a reshaped view, not (n, H, W) masks selecting from a broadcast map (Where):
    ONNX Runtime runs the masks several times slower."""
    import onnx
    ops = {node.op_type for node in onnx.load(str(spp_onnx['sppnet'])).graph.node}
    assert {'Gather', 'ReduceMax'} <= ops and 'Where' not in ops, ops
