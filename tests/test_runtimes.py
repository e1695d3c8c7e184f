"""Every graph ``export_onnx`` writes runs with dynamic height and width in ONNX Runtime, OpenVINO and ONNX's reference
evaluator, and matches PyTorch there.

The narrow model A is exported once (model, backbone and head graphs; fp32 and fp16) and each graph is loaded once
per runtime, then run at odd sizes: images whose feature maps are smaller than the SPP's 7-level (2 x 3, 3 x 2), just
below and just above it (7 x 6, 8 x 9), and for the head, feature maps from 2 x 3 to 13 x 17.
"""
import numpy as np
import pytest
import torch

import timm_prelu  # noqa: F401
from timm_prelu.onnx_model.export import export_onnx, split_paths

from conftest import ONNX_LABELS, narrow_a_export
from runtimes import RUNTIMES, load, max_abs_diff

FP32_TOL = 1e-4  # max abs difference of logits / features
FP16_REL_TOL = 5e-3  # fp16 graphs against the fp32 model: max abs difference <= 5e-3 * max(1, max |output|)
# (batch, height, width): feature maps 2x3, 3x2, 7x6 and 8x9 (stride 16)
IMAGE_SHAPES = [(1, 37, 53), (2, 61, 45), (1, 113, 97), (1, 129, 145)]
FEATURE_SHAPES = [(1, 2, 3), (2, 6, 5), (1, 7, 7), (1, 8, 9), (1, 13, 17)]
GRAPHS = ('model', 'backbone', 'head')


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope='module')
def graphs(tmp_path_factory):
    """(model, {(graph, dtype): path}): the narrow model A's split export, in fp32 and in fp16."""
    model, path = narrow_a_export(tmp_path_factory)
    fp16 = export_onnx(model, tmp_path_factory.mktemp('runtimes-fp16') / 'a.onnx', fp16=True, split=True,
                       label_names=ONNX_LABELS)
    paths = {(g, 'float32'): p for g, p in zip(GRAPHS, (path, *split_paths(path)))}
    paths.update({(g, 'float16'): p for g, p in zip(GRAPHS, (fp16.model, fp16.backbone, fp16.head))})
    return model, paths


def _inputs(model, graph: str, dtype: str):
    """(input array, PyTorch output) pairs at the odd sizes; fp16 graphs at the smallest and the largest map."""
    torch.manual_seed(1)
    channels = model.num_features if graph == 'head' else 3
    shapes = FEATURE_SHAPES if graph == 'head' else IMAGE_SHAPES
    if dtype == 'float16':
        shapes = [shapes[0], shapes[-1]]
    fn = {'model': model, 'backbone': model.forward_features, 'head': model.forward_head}[graph]
    for batch, h, w in shapes:
        x = torch.randn(batch, channels, h, w)
        with torch.no_grad():
            yield x.numpy(), fn(x).numpy()


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
@pytest.mark.parametrize('graph', GRAPHS)
@pytest.mark.parametrize('runtime', RUNTIMES)
def test_graph_runs_with_dynamic_size(graphs, runtime, graph, dtype):
    """Compiled once with dynamic axes, then run at every size: the outputs match PyTorch."""
    model, paths = graphs
    run = load(paths[(graph, dtype)], runtime)
    for x, expected in _inputs(model, graph, dtype):
        out = run(x)
        assert out.dtype == np.float32 and out.shape == expected.shape, (out.dtype, out.shape, x.shape)
        tol = FP32_TOL if dtype == 'float32' else FP16_REL_TOL * max(1.0, float(np.abs(expected).max()))
        err = max_abs_diff(out, expected)
        assert err <= tol, f'{runtime} {graph} ({dtype}) at {x.shape}: max |diff| {err:.3g} > {tol:.3g}'

