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

The resize is in the graph: ``F.interpolate`` with antialiasing (the filter PIL uses when it shrinks) and the result
rounded to the 0..255 grid as PIL's 8-bit resize gives it; see :func:`resize_shorter_side`.
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, OnnxModelError
from ..outputs import finished_output_file

__all__ = ['PROTOCOLS', 'PROTOCOL_METADATA_KEY', 'DenseHead', 'ProtocolModel', 'export_protocol', 'spp_bins_of',
           'resize_shorter_side', 'five_crop_offsets']

PROTOCOLS = ('dense', 'ten_crop', 'full')
PROTOCOL_METADATA_KEY = 'timm_prelu_protocol'  # JSON a service reads: labels, scales, views, mean / std, resize
_INTERPOLATIONS = {'bilinear': 'bilinear', 'bicubic': 'bicubic'}


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
        nh, nw = x.shape[-2] - self.window + 1, x.shape[-1] - self.window + 1
        pooled = {}
        parts = []
        for kr, kc, r0, c0 in self.bins:
            key = (kr, kc)
            if key not in pooled:
                pooled[key] = F.max_pool2d(x, (self.kernels[kr], self.kernels[kc]), stride=1)
            parts.append(pooled[key][:, :, r0:r0 + nh, c0:c0 + nw])
        x = self.act1(self.fc1(torch.cat(parts, dim=1)))
        x = self.act2(self.fc2(x))
        return self.head(x)


def resize_shorter_side(x: torch.Tensor, size: int, interpolation: str = 'bilinear') -> torch.Tensor:
    """(1, 3, H, W) float in 0..255 -> shorter side ``size``, longer side ``size * long // short``, on the 8-bit grid.

    Antialiased interpolation is the filter PIL applies when it shrinks an image; rounding and clamping to 0..255
    reproduces PIL's 8-bit output. The longer side uses integer division where the Python predictor uses
    ``int(size * long / short)`` in floating point: the same except where rounding error crosses an integer.
    """
    h, w = x.shape[-2], x.shape[-1]
    short = torch.sym_min(h, w)
    out = F.interpolate(x, size=(size * h // short, size * w // short), mode=_INTERPOLATIONS[interpolation],
                        antialias=True, align_corners=False)
    return out.round().clamp(0.0, 255.0)


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

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(2, 0, 1).unsqueeze(0).float()
        total = None
        for s in self.scales:
            y = (resize_shorter_side(x, s, self.interpolation) - self.mean) / self.std
            y = self._views(y)
            if self.dense_head is not None:
                logits = self.dense_head(self.model.forward_features(y))  # (views, classes, nh, nw)
                probs = logits.softmax(dim=1).mean(dim=(0, 2, 3))
            else:
                probs = self.model(y).softmax(dim=-1).mean(dim=0)
            total = probs if total is None else total + probs
        return total / len(self.scales)


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
        'resize': f'shorter side to each scale, longer side scale * long // short; antialiased '
                  f'{protocol.interpolation}, rounded to 0..255 (PIL-like)',
        'mean': [float(v) for v in (protocol.mean.flatten() / 255)],
        'std': [float(v) for v in (protocol.std.flatten() / 255)],
        'label_names': list(label_names) if label_names else None,
    }


def export_protocol(model: nn.Module, path: Union[str, os.PathLike], protocol: str = 'dense',
                    scales: Sequence[int] = (256, 384, 480), flip: bool = True, crop_size: Optional[int] = None,
                    label_names: Optional[Sequence[str]] = None, model_name: str = '',
                    opset: Optional[int] = None, overwrite: bool = False) -> Path:
    """Write the protocol graph of ``model`` to ``path`` (complete or absent): uint8 image (H, W, 3) -> probs.

    Height and width are named dynamic axes; the metadata key ``timm_prelu_protocol`` describes the call. An
    existing file is replaced only with ``overwrite`` and only if timm-prelu wrote it.
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
    side = max(wrapped.scales)
    example = torch.zeros((side, side + 1, 3), dtype=torch.uint8)
    dims = {0: torch.export.Dim('height', min=2, max=16384), 1: torch.export.Dim('width', min=2, max=16384)}
    try:
        with torch.no_grad():
            program = torch.onnx.export(wrapped, (example,), dynamo=True, opset_version=opset,
                                        dynamic_shapes={'image': dims}, input_names=['image'],
                                        output_names=['probs'], verbose=False)
    except Exception as e:
        raise OnnxModelError(f'the protocol graph could not be exported ({type(e).__name__}); the model must be '
                             f'a PReLU-net with an SPP head', param='model') from e
    proto = program.model_proto
    meta = protocol_metadata(wrapped, label_names, model_name)
    for key, value in ((METADATA_KEY, {'format': 1, 'graph': 'protocol', 'model_name': model_name}),
                       (PROTOCOL_METADATA_KEY, meta)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    with finished_output_file(path, overwrite, param='path') as tmp:
        onnx.save(proto, str(tmp))
    return path
