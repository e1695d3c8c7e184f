"""The paper's whole test protocol as one network: decoded RGB image in, averaged class probabilities out.

:class:`ProtocolModel` wraps a PReLU-net so that a single ONNX graph does what
:class:`~timm_prelu.inference.predictor.MultiScalePredictor` does in Python: for each scale s the image's shorter
side is resized to s, normalised with the pretrained_cfg's mean / std, flipped, run through the network, and the
softmax scores are averaged over the views of a scale, then over the scales with equal weight.

The dense view runs the convolutions once per scale and evaluates the SPP head on every ``window x window`` window
of the last feature map with no loop over windows: each SPP bin of a window is a max pool of the bin's size at
stride 1 over the whole map, read at the bin's offset inside the window; fc1, fc2 and the classifier become 1x1
convolutions over the resulting (bins x channels) map. :class:`DenseHead` is that head; it equals the head run
window by window.

The resize is in the graph: PIL's resampling filter as two matrix products, rounded to the 0..255 grid as PIL's
8-bit resize gives it; see :func:`resize_shorter_side`. :func:`export_protocol` exports the resize of each scale and
the scoring network apart and joins them into one graph (see :func:`_stitch`).
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, OnnxModelError
from ..outputs import finished_output_file
from .graph_forms import optimize_for_ort

__all__ = ['PROTOCOLS', 'PROTOCOL_METADATA_KEY', 'DenseHead', 'ProtocolModel', 'export_protocol', 'spp_bins_of',
           'resize_shorter_side', 'resize_weights', 'five_crop_offsets']

PROTOCOLS = ('dense', 'ten_crop', 'full')
PROTOCOL_METADATA_KEY = 'timm_prelu_protocol'  # JSON a service reads: labels, scales, views, mean / std, resize
_INTERPOLATIONS = ('bilinear', 'bicubic')


def spp_bins_of(pool: nn.Module, size: int) -> List[List[Tuple[int, int]]]:
    """The bins ``(start, length)`` of each level of an SPP layer on a ``size x size`` map, read from the layer.

    Probes the layer with one bright row at a time, so the result is whatever binning rule the layer implements.
    Rows and columns follow the same rule (the layer pools rows, then columns, with the same function).
    """
    levels = [int(n) for n in pool.levels]
    probe = torch.full((size, 1, size, 1), -1.0)
    for r in range(size):
        probe[r, 0, r, 0] = 1.0
    with torch.no_grad():
        hit = pool(probe) > 0  # (rows, bins): which bins contain row r
    bins, offset = [], 0
    for n in levels:
        level = []
        for i in range(n):
            # the flattened level is (C=1, n, n): bin (i, 0) holds the rows of row-bin i
            rows = torch.nonzero(hit[:, offset + i * n]).flatten().tolist()
            if not rows or rows != list(range(rows[0], rows[-1] + 1)):
                raise ConfigError(f'SPP level {n} has a bin that is not a contiguous run of rows at map size {size}: '
                                  f'{rows}', param='model')
            level.append((rows[0], len(rows)))
        bins.append(level)
        offset += n * n
    return bins


def _conv1x1(linear: nn.Linear, weight: Optional[torch.Tensor] = None) -> nn.Conv2d:
    w = linear.weight if weight is None else weight
    conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(w.reshape(w.shape[0], w.shape[1], 1, 1))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


class DenseHead(nn.Module):
    """The SPP head of a PReLU-net on every ``window x window`` window of a feature map, fully convolutional.

    Input (B, C, H, W) with H, W >= window; output (B, classes, H - window + 1, W - window + 1), window (i, j)'s
    logits at [:, :, i, j] -- the logits ``model.forward_head(features[:, :, i:i+window, j:j+window])`` gives.
    """

    def __init__(self, model: nn.Module, window: int) -> None:
        super().__init__()
        channels = int(model.num_features)
        self.window = int(window)
        levels = spp_bins_of(model.pool, self.window)
        kernels: List[int] = sorted({length for level in levels for _, length in level})
        self.kernels = kernels
        bins: List[Tuple[int, int, int, int]] = []  # (row kernel, column kernel, row start, column start), SPP order
        blocks = []
        offset = 0
        for level in levels:
            n = len(level)
            w = model.fc1.weight[:, offset:offset + channels * n * n].reshape(-1, channels, n * n)
            blocks.append(w.transpose(1, 2).reshape(w.shape[0], n * n * channels))  # bin-major, as concatenated
            for r0, rl in level:
                for c0, cl in level:
                    # a bin's rows and columns have one length per bin index; pools are square when they agree
                    bins.append((kernels.index(rl), kernels.index(cl), r0, c0))
            offset += channels * n * n
        self.bins = bins
        self.fc1 = _conv1x1(model.fc1, torch.cat(blocks, dim=1))
        self.act1 = model.act1
        self.fc2 = _conv1x1(model.fc2)
        self.act2 = model.act2
        self.head = _conv1x1(model.head) if isinstance(model.head, nn.Linear) else model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = {}
        parts = []
        for kr, kc, r0, c0 in self.bins:
            key = (kr, kc)
            if key not in pooled:
                pooled[key] = F.max_pool2d(x, (self.kernels[kr], self.kernels[kc]), stride=1)
            # rows r0 .. r0 + H - window of a map of H - k + 1 rows: a constant start and a constant end counted
            # from the far side, so an exported graph holds no size arithmetic (and exports quickly)
            bottom, right = self.window - self.kernels[kr] - r0, self.window - self.kernels[kc] - c0
            parts.append(pooled[key][:, :, r0:-bottom or None, c0:-right or None])
        x = self.act1(self.fc1(torch.cat(parts, dim=1)))
        x = self.act2(self.fc2(x))
        return self.head(x)


# A value this close below k + 0.5 rounds up: exact halves are common when enlarging, and runtimes whose float sums
# land a hair either side of them then still agree (PIL's fixed-point sum also rounds halves up).
_TIE = 1e-3


def _filter(x: torch.Tensor, interpolation: str) -> torch.Tensor:
    x = x.abs()
    if interpolation == 'bilinear':
        return (1.0 - x).clamp(min=0.0)
    a = -0.5  # PIL's bicubic
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resize_weights(in_size, out_size, interpolation: str = 'bilinear') -> torch.Tensor:
    """(out_size, in_size) float32: row i holds the antialiased filter weights of output sample i (PIL's resample:
    the filter stretched by the scale when shrinking, centred on ``(i + 0.5) * in / out``, normalised to sum 1)."""
    scale = torch.arange(1, dtype=torch.float32).add(in_size) / out_size  # a tensor: no symbolic float in the graph
    support = scale.clamp(min=1.0)
    centre = (torch.arange(out_size, dtype=torch.float32) + 0.5) * scale
    pos = torch.arange(in_size, dtype=torch.float32) + 0.5
    w = _filter((pos.unsqueeze(0) - centre.unsqueeze(1)) / support, interpolation)
    return w / w.sum(dim=1, keepdim=True)


def _round_8bit(x: torch.Tensor) -> torch.Tensor:
    return (x + (0.5 + _TIE)).floor().clamp(0.0, 255.0)


def resize_shorter_side(x: torch.Tensor, size: int, interpolation: str = 'bilinear') -> torch.Tensor:
    """(1, 3, H, W) float in 0..255 -> shorter side ``size``, longer side ``size * long // short``, on the 8-bit grid.

    PIL's 8-bit resample, as dense matrix products: columns first, rounded to 0..255, then rows, rounded again
    (PIL keeps the intermediate image in 8 bits). Plain MatMul rather than an antialiased ONNX Resize, which not
    every runtime implements. The longer side uses integer division where the Python predictor uses
    ``int(size * long / short)`` in floating point: the same except where rounding error crosses an integer.
    """
    h, w = x.shape[-2], x.shape[-1]
    short = torch.sym_min(h, w)
    cols = resize_weights(w, size * w // short, interpolation)
    rows = resize_weights(h, size * h // short, interpolation)
    x = _round_8bit(torch.matmul(x, cols.t()))
    return _round_8bit(torch.matmul(rows, x))


def _half_to_even(n):
    """``round(n / 2)`` as Python rounds (half to even), in integer arithmetic that traces symbolically."""
    q = n // 2
    return q + (n % 2) * (q % 2)


def five_crop_offsets(height: int, width: int, crop: int) -> List[Tuple[int, int]]:
    """Top-left corners of the four corner crops and the centre crop (torchvision's five_crop / center_crop)."""
    top, left = _half_to_even(height - crop), _half_to_even(width - crop)
    return [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop), (top, left)]


class ProtocolModel(nn.Module):
    """A PReLU-net with the paper's test protocol around it: uint8 image (H, W, 3) -> probabilities (classes,).

    Args:
        model: A PReLU-net (eval mode; its pretrained_cfg gives mean, std, interpolation and input size).
        protocol: 'dense' (every window of the last feature map, the paper's test), 'ten_crop' (four corners and
            the centre at ``crop_size``, each also flipped) or 'full' (the whole resized image through the SPP head).
        scales: Shorter-side sizes; scores are averaged over scales with equal weight.
        flip: Also score the horizontally flipped image ('ten_crop' always flips).
        crop_size: The crop of 'ten_crop' and the window of 'dense' (window = crop_size / feature stride); default
            the model's input size.
    """

    def __init__(self, model: nn.Module, protocol: str = 'dense', scales: Sequence[int] = (256, 384, 480),
                 flip: bool = True, crop_size: Optional[int] = None) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ConfigError(f'unknown protocol {protocol!r}: choose one of {", ".join(PROTOCOLS)}', param='protocol')
        cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
        self.model = model.eval()
        self.protocol = protocol
        self.scales = [int(s) for s in scales]
        self.flip = bool(flip) or protocol == 'ten_crop'
        self.crop_size = int(crop_size or cfg.get('input_size', (3, 224, 224))[-1])
        self.interpolation = cfg.get('interpolation', 'bilinear')
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(f'interpolation {self.interpolation!r} has no in-graph resize: use one of '
                              f'{", ".join(_INTERPOLATIONS)} in the pretrained_cfg', param='model')
        if not self.scales or min(self.scales) < self.crop_size:
            raise ConfigError(f'scales {self.scales} must all be at least the crop / window size {self.crop_size} px '
                              f'(the graph assumes every view fits the resized image)', param='scales')
        stride = 2 ** (1 + len(model.stages))
        self.window = self.crop_size // stride
        self.dense_head = DenseHead(model, self.window) if protocol == 'dense' else None
        self.register_buffer('mean', torch.tensor(cfg.get('mean', (0.485, 0.456, 0.406))).view(1, 3, 1, 1) * 255)
        self.register_buffer('std', torch.tensor(cfg.get('std', (0.229, 0.224, 0.225))).view(1, 3, 1, 1) * 255)

    def preprocess(self, image: torch.Tensor, scale: int) -> torch.Tensor:
        """uint8 (H, W, 3) -> the normalised (1, 3, h, w) image whose shorter side is ``scale``."""
        x = image.permute(2, 0, 1).unsqueeze(0).float()
        return (resize_shorter_side(x, scale, self.interpolation) - self.mean) / self.std

    def _views(self, x: torch.Tensor) -> torch.Tensor:
        if self.protocol == 'ten_crop':
            c = self.crop_size
            h, w = x.shape[-2], x.shape[-1]
            top, left = _half_to_even(h - c), _half_to_even(w - c)
            crops = [x[:, :, :c, :c], x[:, :, :c, w - c:], x[:, :, h - c:, :c], x[:, :, h - c:, w - c:],
                     x[:, :, top:top + c, left:left + c]]
            x = torch.cat(crops)
        if self.flip:
            x = torch.cat([x, x.flip(-1)])
        return x

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """One scale: the normalised, resized image (1, 3, h, w) -> its probabilities averaged over the views."""
        x = self._views(x)
        if self.dense_head is not None:
            logits = self.dense_head(self.model.forward_features(x))  # (views, classes, nh, nw)
            return logits.softmax(dim=1).mean(dim=(0, 2, 3))
        return self.model(x).softmax(dim=-1).mean(dim=0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        total = None
        for s in self.scales:
            probs = self.score(self.preprocess(image, s))
            total = probs if total is None else total + probs
        return total / len(self.scales)


class _Preprocess(nn.Module):
    def __init__(self, protocol: ProtocolModel, scale: int) -> None:
        super().__init__()
        self.protocol, self.scale = protocol, scale
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.protocol.preprocess(image, self.scale)


class _Score(nn.Module):
    def __init__(self, protocol: ProtocolModel) -> None:
        super().__init__()
        self.protocol = protocol
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.protocol.score(x)


def protocol_metadata(protocol: ProtocolModel, label_names: Optional[Sequence[str]] = None,
                      model_name: str = '') -> Dict[str, Any]:
    """What a service needs to call the graph and read its output, without timm-prelu installed."""
    return {
        'format': 1,
        'model_name': model_name,
        'input': {'name': 'image', 'dtype': 'uint8', 'shape': ['height', 'width', 3], 'layout': 'HWC, RGB, decoded'},
        'output': {'name': 'probs', 'dtype': 'float32', 'shape': [int(protocol.model.num_classes)]},
        'protocol': protocol.protocol,
        'views': {'dense': f'every {protocol.window}x{protocol.window} window of the last feature map',
                  'ten_crop': f'4 corner + centre crops of {protocol.crop_size} px',
                  'full': 'the whole resized image'}[protocol.protocol],
        'flip': protocol.flip,
        'scales': protocol.scales,
        'crop_size': protocol.crop_size,
        'averaging': 'softmax probabilities: mean over the views of a scale, then mean over scales',
        'resize': f'shorter side to each scale, longer side scale * long // short; PIL\'s {protocol.interpolation} '
                  f'filter (stretched when shrinking), columns then rows, each rounded to 0..255',
        'mean': [float(v) for v in (protocol.mean.flatten() / 255)],
        'std': [float(v) for v in (protocol.std.flatten() / 255)],
        'label_names': list(label_names) if label_names else None,
    }


_IMAGE_DIMS = {0: ('height', 2), 1: ('width', 2)}


def _score_dims(protocol: ProtocolModel) -> Dict[int, Tuple[str, int]]:
    return {2: ('h', protocol.crop_size), 3: ('w', protocol.crop_size)}


def _score_example(protocol: ProtocolModel) -> Tuple[int, ...]:
    side = max(protocol.crop_size, min(protocol.scales))
    return 1, 3, side, side + 1


def _export_part(module: nn.Module, name: str, dims: Dict[int, Tuple[str, int]], shape: Tuple[int, ...],
                 opset: Optional[int], dtype: torch.dtype = torch.float32):
    """One dynamo export of a piece of the protocol, its dynamic axes fresh symbols (so shape formulas stay short)."""
    example = torch.zeros(shape, dtype=dtype)
    dynamic = {axis: torch.export.Dim(label, min=low, max=16384) for axis, (label, low) in dims.items()}
    program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, dynamic_shapes={name: dynamic},
                                input_names=[name], output_names=['out'], verbose=False)
    return program.model_proto


def _stitch(preprocess: Sequence[Any], score: Any, classes: int):
    """One graph from the per-scale preprocessing graphs and the scoring graph, the scoring repeated per scale.

    Exporting the whole protocol at once carries the resize's ``scale * long // short`` through every layer's
    shape formula, and export time grows much faster than the number of scales; exported apart, each piece has
    plain symbolic sizes. The scoring graph's initializers (all the weights) are stored once and shared.
    """
    import onnx
    from onnx import helper
    for part in (*preprocess, score):
        if part.functions or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                 for node in part.graph.node for a in node.attribute):
            raise OnnxModelError('the exporter wrote functions or subgraphs the protocol stitching does not '
                                 'handle; export with a different opset', param='opset')
    nodes, inits, outputs = [], list(score.graph.initializer), []
    shared = {t.name for t in score.graph.initializer}

    def copy_graph(graph, prefix, keep, rename):
        def name(n):
            return n if not n or n in keep else rename.get(n, prefix + n)
        for t in graph.initializer:
            if t.name not in keep:
                c = onnx.TensorProto()
                c.CopyFrom(t)
                c.name = name(t.name)
                inits.append(c)
        for node in graph.node:
            c = onnx.NodeProto()
            c.CopyFrom(node)
            c.name = prefix + node.name
            c.input[:] = [name(n) for n in node.input]
            c.output[:] = [name(n) for n in node.output]
            nodes.append(c)

    score_in, score_out = score.graph.input[0].name, score.graph.output[0].name
    for i, pre in enumerate(preprocess):
        prefix = f'scale{i}/'
        resized = prefix + 'resized'
        copy_graph(pre.graph, prefix + 'pre/', {'image'}, {pre.graph.output[0].name: resized})
        outputs.append(prefix + 'probs')
        copy_graph(score.graph, prefix, shared, {score_in: resized, score_out: outputs[-1]})
    count = onnx.numpy_helper.from_array(np.array(len(preprocess), dtype=np.float32), 'num_scales')
    inits.append(count)
    nodes += [helper.make_node('Sum', outputs, ['probs_sum'], name='sum_scales'),
              helper.make_node('Div', ['probs_sum', 'num_scales'], ['probs'], name='mean_scales')]
    graph = helper.make_graph(nodes, 'prelu_protocol', [preprocess[0].graph.input[0]],
                              [helper.make_tensor_value_info('probs', onnx.TensorProto.FLOAT, [classes])],
                              inits)
    opsets = {}
    for part in (*preprocess, score):
        for o in part.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name=score.producer_name, producer_version=score.producer_version)
    model.ir_version = max(p.ir_version for p in (*preprocess, score))
    onnx.checker.check_model(model)
    return model


def export_protocol(model: nn.Module, path: Union[str, os.PathLike], protocol: str = 'dense',
                    scales: Sequence[int] = (256, 384, 480), flip: bool = True, crop_size: Optional[int] = None,
                    label_names: Optional[Sequence[str]] = None, model_name: str = '',
                    opset: Optional[int] = None, overwrite: bool = False, ort_forms: bool = True) -> Path:
    """Write the protocol graph of ``model`` to ``path`` (complete or absent): uint8 image (H, W, 3) -> probs.

    Height and width are named dynamic axes; the metadata key ``timm_prelu_protocol`` describes the call. An
    existing file is replaced only with ``overwrite`` and only if timm-prelu wrote it. ``ort_forms`` writes the
    network's PReLUs in the exact forms ONNX Runtime runs fastest (see
    :func:`timm_prelu.onnx_model.graph_forms.optimize_for_ort`).
    """
    import onnx
    from .runtime import METADATA_KEY
    path = Path(path)
    if path.suffix != '.onnx':
        raise ConfigError(f'{path}: the output file must end in .onnx (e.g. model.protocol.onnx)', param='path')
    wrapped = ProtocolModel(model, protocol, scales, flip, crop_size).eval()
    if label_names is not None and len(label_names) != int(model.num_classes):
        raise ConfigError(f'{len(label_names)} label names for a model with {model.num_classes} classes',
                          param='label_names')
    try:
        with torch.no_grad():
            score = _export_part(_Score(wrapped), 'x', _score_dims(wrapped), _score_example(wrapped), opset)
            if ort_forms:
                score = optimize_for_ort(score, inplace=True)
            proto = _stitch([_export_part(_Preprocess(wrapped, s), 'image', _IMAGE_DIMS, (s, s + 1, 3), opset,
                                          torch.uint8) for s in wrapped.scales], score, int(model.num_classes))
    except OnnxModelError:
        raise
    except Exception as e:
        raise OnnxModelError(f'the protocol graph could not be exported ({type(e).__name__}: {e}); the model must '
                             f'be a PReLU-net with an SPP head', param='model') from e
    meta = protocol_metadata(wrapped, label_names, model_name)
    info = {'format': 1, 'graph': 'protocol', 'model_name': model_name,
            'graph_forms': 'onnxruntime' if ort_forms else 'plain'}
    for key, value in ((METADATA_KEY, info),
                       (PROTOCOL_METADATA_KEY, meta)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    with finished_output_file(path, overwrite, param='path') as tmp:
        onnx.save(proto, str(tmp))
    return path
