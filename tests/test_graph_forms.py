"""Exported graphs in ONNX Runtime's fast forms: same outputs as PyTorch for any PReLU slope, conv chain unbroken."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

from timm_prelu.models.prelu_net import PReLUNet
from timm_prelu.onnx_model.export import export_onnx
from timm_prelu.onnx_model.graph_forms import optimize_for_ort, prelu_forms
from timm_prelu.onnx_model.runtime import read_metadata

NARROW = dict(width_mult=0.125, fc_dim=64, num_classes=10)
ODD_SIZES = ((1, 45, 45), (3, 67, 93))  # (batch, height, width): dynamic axes, sides that do not divide by 16


def _set_slopes(model: torch.nn.Module) -> None:
    """Every kind of learned slope: above 1, negative, exactly 0, mixed within a layer, and all-zero layers."""
    g = torch.Generator().manual_seed(1)
    patterns = [lambda n: torch.rand(n, generator=g) * 4 - 1.5,  # -1.5 .. 2.5, mixed signs and > 1
                lambda n: torch.zeros(n),  # a ReLU layer
                lambda n: torch.rand(n, generator=g),  # 0 .. 1
                lambda n: 1 + torch.rand(n, generator=g) * 2,  # all > 1
                lambda n: torch.where(torch.arange(n) % 3 == 0, 0.0, -torch.rand(n, generator=g) * 3)]
    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    with torch.no_grad():
        for i, m in enumerate(prelus):
            m.weight.copy_(patterns[i % len(patterns)](m.weight.numel()))


def _session(proto_or_path, optimized_path=None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    src = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    return ort.InferenceSession(src, so, providers=['CPUExecutionProvider'])


def _max_diff(session, model, batch, h, w) -> float:
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    with torch.no_grad():
        ref = model(x).numpy()
    out = session.run(None, {'image': x.numpy()})[0]
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max())


@pytest.mark.parametrize('act', ['prelu', 'prelu_shared'])
def test_rewritten_graph_equals_pytorch_for_any_slope(act, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('prelu_model_a', act=act, **NARROW).eval()
    _set_slopes(model)
    export_onnx(model, tmp_path / 'plain.onnx', ort_forms=False)
    plain = onnx.load(str(tmp_path / 'plain.onnx'))
    forms = prelu_forms(plain)
    if act == 'prelu':  # every branch of the rewrite is exercised (the fc PReLUs act on 2-D tensors: kept)
        assert {'mul_add', 'signed', 'relu', 'keep'} <= set(forms), forms
    else:
        assert set(forms) == {'leaky_relu'}, forms
    fast = optimize_for_ort(plain)
    assert sum(n.op_type == 'PRelu' for n in fast.graph.node) == forms.count('keep')
    onnx.checker.check_model(fast, full_check=True)
    assert [i.name for i in fast.graph.input] == ['image'] and fast.metadata_props == plain.metadata_props
    session = _session(fast)
    for batch, h, w in ODD_SIZES:
        assert _max_diff(session, model, batch, h, w) <= 1e-4


def test_export_writes_fast_forms_in_every_graph(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('prelu_model_a', **NARROW).eval()
    _set_slopes(model)
    paths = export_onnx(model, tmp_path / 'a.onnx', split=True)
    for path in paths.paths:
        assert read_metadata(path)['graph_forms'] == 'onnxruntime'
        ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        assert ops['Gemm'] == 0
        if path != paths.head:  # conv layers: no per-channel PRelu left, only the two fc ones in the model graph
            assert ops['PRelu'] == (2 if path == paths.model else 0), ops
    session = _session(paths.model)
    for batch, h, w in ODD_SIZES:
        assert _max_diff(session, model, batch, h, w) <= 1e-4
    # the backbone and head run apart as the dense predictor runs them
    backbone, head = _session(paths.backbone), _session(paths.head)
    x = torch.randn(2, 3, 77, 61)
    with torch.no_grad():
        feats = model.forward_features(x)
        ref = model.forward_head(feats).numpy()
    out_feats = backbone.run(None, {'image': x.numpy()})[0]
    assert np.abs(out_feats - feats.numpy()).max() <= 1e-4
    assert np.abs(head.run(None, {'features': out_feats})[0] - ref).max() <= 1e-4


def test_onnx_reference_evaluator_runs_the_rewritten_graph(tmp_path):
    from onnx.reference import ReferenceEvaluator
    torch.manual_seed(0)
    model = timm.create_model('prelu_model_a', **NARROW).eval()
    _set_slopes(model)
    path = export_onnx(model, tmp_path / 'a.onnx').model
    x = torch.randn(1, 3, 47, 51)
    with torch.no_grad():
        ref = model(x).numpy()
    out = ReferenceEvaluator(str(path)).run(None, {'image': x.numpy()})[0]
    assert np.abs(out - ref).max() <= 1e-4


def _reorders(path, tmp_path) -> int:
    optimized = tmp_path / (path.stem + '.ort.onnx')
    _session(path, optimized)
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    return ops['ReorderInput'] + ops['ReorderOutput'], ops['PRelu']


def test_prelu_keeps_ort_conv_chain_like_relu(tmp_path):
    """In ONNX Runtime's optimized graph a PReLU-net holds no more layout reorders than its ReLU twin and no PRelu
    on a conv map. Widths are multiples of 16 so ORT's blocked (NCHWc) convs take every layer."""
    counts = {}
    for act in ('prelu', 'relu'):
        torch.manual_seed(0)
        model = PReLUNet(act=act, width_mult=0.5, widths=(64, 64, 64), depths=(2, 1, 1), fc_dim=64,
                         num_classes=10).eval()
        _set_slopes(model)
        counts[act] = _reorders(export_onnx(model, tmp_path / f'{act}.onnx').model, tmp_path)
    reorders, prelus = counts['prelu']
    assert reorders <= counts['relu'][0], counts
    assert prelus == 2, counts  # the two fc PReLUs (2-D) only
