"""Exact rewrites of exported graphs that CPU runtimes execute faster, with standard ONNX ops only.

ONNX Runtime runs convolutions in a blocked channel layout (NCHWc) and keeps tensors in it from conv to conv only
through ops its NCHWc transformer knows (Conv, pools, Relu, Add, Mul by a per-channel constant, Concat, ...).
``PRelu`` is not one of them, so every conv rectified by a channel-wise PReLU pays a ``ReorderOutput`` to plain
NCHW, a slow broadcasting ``PRelu`` kernel, and a ``ReorderInput`` back; a ReLU network pays none of it (the Relu is
fused into the conv). :func:`optimize_for_ort` writes each such ``PRelu`` ``f(y) = max(y, 0) + a min(y, 0)`` as

* ``Mul(y, a) + Relu(Mul(y, 1 - a))`` for channels with ``a <= 1`` and ``y - Relu(Mul(y, 1 - a))`` for channels
  with ``a > 1`` (equal to PReLU for any slope up to float rounding; a layer with any slope above 1 gets a
  per-channel Mul on each branch), ``Relu(y)`` where every slope is 0;
* ``LeakyRelu(alpha=a)`` for a channel-shared slope (bit-exact, and fused into the conv by ORT).

The slopes are read from the graph at export time, so the form of each layer follows its trained slopes. ORT turns
the per-channel Muls into 1x1 depthwise NCHWc convs (the Relu fuses into the first), so the whole conv chain stays
blocked. PRelus after fully connected layers (2-D inputs) are left as they are: no layout change there.

Fully connected layers (``Gemm`` with a constant ``(out, in)`` weight) become a 1x1 ``Conv`` over the batch laid out
as a spatial axis: ``(B, in) -> (1, in, B, 1) -> Conv -> (1, out, B, 1) -> (B, out)``. ORT's Gemm pre-packs the
weight and, at small batches, reads fc1's 528 MB slower than its conv kernel streams the same weight (fc1 alone,
one thread: 0.57-0.73x the Gemm's time at batch 1-8, about equal at 64; model A at 224 px, batch 1: the fc layers
from 28 to 22 ms). The weight tensor is reused, not copied.

The graph stays a plain opset graph: OpenVINO and ``onnx.reference`` run it like the original.
"""
from typing import Dict, List, Optional

import numpy as np

__all__ = ['optimize_for_ort', 'prelu_forms', 'gemm_as_conv']


def _constants(graph) -> Dict:
    """Name -> TensorProto of every initializer and Constant node value."""
    values = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == 'Constant' and len(node.output) == 1:
            for attr in node.attribute:
                if attr.name == 'value':
                    values[node.output[0]] = attr.t
    return values


def _slope(constants, name: str) -> Optional[np.ndarray]:
    from onnx import numpy_helper
    tensor = constants.get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return value if value.dtype == np.float32 else None


def _is_channel_slope(a: np.ndarray) -> bool:
    """(C, 1, 1) or (1, C, 1, 1): a per-channel slope of a 4-D NCHW tensor."""
    shape = a.shape[-3:] if a.ndim == 4 and a.shape[0] == 1 else (a.shape if a.ndim == 3 else None)
    return shape is not None and shape[1] == 1 and shape[2] == 1


def prelu_forms(model) -> List[str]:
    """The form :func:`optimize_for_ort` gives each PRelu of ``model`` (in node order): 'relu', 'leaky_relu',
    'mul_add' (all slopes <= 1), 'signed' (some slope > 1) or 'keep'."""
    constants = _constants(model.graph)
    return [_form(_slope(constants, n.input[1])) for n in model.graph.node if n.op_type == 'PRelu']


def _form(a: Optional[np.ndarray]) -> str:
    if a is None or not np.all(np.isfinite(a)):
        return 'keep'
    if a.size == 1:
        return 'leaky_relu'
    if not _is_channel_slope(a):
        return 'keep'
    if np.all(a == 0):
        return 'relu'
    return 'signed' if np.any(a > 1) else 'mul_add'


def optimize_for_ort(model, prelu: bool = True, gemm: bool = True, inplace: bool = False):
    """``model`` (an ``onnx.ModelProto``) with its PRelus of constant slopes in forms ONNX Runtime keeps inside its
    NCHWc conv chain (``prelu``) and its constant-weight Gemms as 1x1 convs (``gemm``); see the module docstring.
    Same inputs, outputs and metadata, same results within float rounding. A copy unless ``inplace`` (full-size
    graphs are about 700 MB)."""
    import onnx

    out = model
    if not inplace:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    if prelu:
        _rewrite_prelus(out.graph)
    if gemm:
        gemm_as_conv(out.graph)
    _drop_unused_initializers(out.graph)
    return out


class _Names:
    """Fresh tensor names and new initializers for a graph being rewritten."""

    def __init__(self, graph):
        self.taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} \
            | {i.name for i in graph.input}
        self.initializers = []

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f'{base}_{k}'
        self.taken.add(name)
        return name

    def const(self, base: str, value: np.ndarray, dtype=np.float32) -> str:
        from onnx import numpy_helper
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name))
        return name


def _drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for n in graph.node:  # names read inside subgraphs (If / Loop bodies)
        for attr in n.attribute:
            for sub in ([attr.g] if attr.HasField('g') else []) + list(attr.graphs):
                used |= {i for m in sub.node for i in m.input}
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _attrs(node) -> Dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def gemm_as_conv(graph) -> int:
    """Rewrite, in place, every ``Gemm(x, W[, b])`` with constant ``W`` of shape (out, in) (``transB=1``, no
    ``transA``, ``alpha = beta = 1``, ``b`` absent or of shape (out,)) as a 1x1 Conv over the batch as a spatial
    axis (see the module docstring). Returns how many were rewritten."""
    from onnx import helper, numpy_helper
    constants = _constants(graph)
    initializers = {t.name: t for t in graph.initializer}
    readers: Dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    names = _Names(graph)
    nodes, count, reshaped = [], 0, set()
    for node in graph.node:
        attrs = _attrs(node) if node.op_type == 'Gemm' else {}
        w_name = node.input[1] if node.op_type == 'Gemm' else ''
        w = initializers.get(w_name)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        b = _slope(constants, bias) if bias else None
        ok = (node.op_type == 'Gemm' and node.domain in ('', 'ai.onnx') and w is not None and len(w.dims) == 2
              and w.data_type == 1 and attrs.get('transB', 0) == 1 and attrs.get('transA', 0) == 0
              and attrs.get('alpha', 1.0) == 1.0 and attrs.get('beta', 1.0) == 1.0
              and (bias is None or (b is not None and b.size == w.dims[0] and b.ndim <= 2)))
        if not ok:
            nodes.append(node)
            continue
        out_f, in_f = int(w.dims[0]), int(w.dims[1])
        if readers.get(w_name, 0) == 1:  # reuse the weight tensor: fc1 alone is 528 MB
            w.dims[:] = [out_f, in_f, 1, 1]
            kernel = w_name
            reshaped.add(w_name)
        else:
            kernel = names.const(f'{w_name}/conv', numpy_helper.to_array(w).reshape(out_f, in_f, 1, 1))
        tag = node.name or node.output[0]
        x = node.input[0]
        xt, x4, y4, yt = (names.fresh(f'{tag}/{s}') for s in ('in_t', 'in_nchw', 'out_nchw', 'out_t'))
        conv_inputs = [x4, kernel] + ([names.const(f'{tag}/bias', b.reshape(-1))] if bias else [])
        nodes += [
            helper.make_node('Transpose', [x], [xt], name=f'{tag}/transpose_in', perm=[1, 0]),
            helper.make_node('Reshape', [xt, names.const(f'{tag}/nchw_shape', [1, in_f, -1, 1], np.int64)], [x4],
                             name=f'{tag}/to_nchw'),
            helper.make_node('Conv', conv_inputs, [y4], name=f'{tag}/conv', kernel_shape=[1, 1]),
            helper.make_node('Reshape', [y4, names.const(f'{tag}/out_shape', [out_f, -1], np.int64)], [yt],
                             name=f'{tag}/from_nchw'),
            helper.make_node('Transpose', [yt], [node.output[0]], name=f'{tag}/transpose_out', perm=[1, 0]),
        ]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(names.initializers)
    stale = [v for v in graph.value_info if v.name in reshaped]  # shapes the exporter recorded for the old weight
    for v in stale:
        graph.value_info.remove(v)
    return count


def _rewrite_prelus(graph) -> None:
    from onnx import helper
    constants = _constants(graph)
    names = _Names(graph)
    fresh, const = names.fresh, names.const
    nodes = []
    for node in graph.node:
        if node.op_type != 'PRelu' or node.domain not in ('', 'ai.onnx'):
            nodes.append(node)
            continue
        a = _slope(constants, node.input[1])
        form = _form(a)
        y, result, tag = node.input[0], node.output[0], node.name or node.output[0]
        if form == 'keep':
            nodes.append(node)
        elif form == 'leaky_relu':
            nodes.append(helper.make_node('LeakyRelu', [y], [result], name=f'{tag}/leaky_relu',
                                          alpha=float(a.reshape(-1)[0])))
        elif form == 'relu':
            nodes.append(helper.make_node('Relu', [y], [result], name=f'{tag}/relu'))
        else:
            up = a > 1
            alpha = np.where(up, np.float32(1), a)  # coefficient of y
            beta = np.where(up, np.float32(-1), np.float32(1))  # coefficient of Relu((1 - a) y)
            scaled = fresh(f'{tag}/scaled')
            pos = fresh(f'{tag}/rectified')
            nodes.append(helper.make_node('Mul', [y, const(f'{tag}/one_minus_slope', 1 - a)], [scaled],
                                          name=f'{tag}/mul_one_minus_slope'))
            nodes.append(helper.make_node('Relu', [scaled], [pos], name=f'{tag}/relu'))
            lin = y
            if not np.all(alpha == 1):
                lin = fresh(f'{tag}/slope_part')
                nodes.append(helper.make_node('Mul', [y, const(f'{tag}/slope', alpha)], [lin],
                                              name=f'{tag}/mul_slope'))
            if np.all(beta == 1):
                nodes.append(helper.make_node('Add', [lin, pos], [result], name=f'{tag}/add'))
            else:  # a sign Mul, not a Sub: ORT's NCHWc chain takes Add and Mul only
                signed = fresh(f'{tag}/signed')
                nodes.append(helper.make_node('Mul', [pos, const(f'{tag}/sign', beta)], [signed],
                                              name=f'{tag}/mul_sign'))
                nodes.append(helper.make_node('Add', [lin, signed], [result], name=f'{tag}/add'))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(names.initializers)
