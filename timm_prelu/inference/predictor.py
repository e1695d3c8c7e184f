"""Multi-scale, multi-view prediction as the paper tests (section 3), on PyTorch or ONNX Runtime.

For each scale s the image's shorter side is resized to s (timm's interpolation for the model) and normalised with
the model's mean / std. Views:

* ``'full'``: the whole resized image (any size: the SPP head takes any feature map);
* ``'center'``: the centre crop of the model's input size (224 x 224 for the paper's models);
* ``'dense'``: the paper's dense multi-view: the convolutions run ONCE on the resized image, then every
  window x window window of the last conv feature map (14 x 14 for a 224-trained model: input_size / 16) is pooled
  by the SPP and sent through the fc layers, batched. A map smaller than the window is one view.
* ``'ten_crop'``: the paper's 10-view test (its Tables 2 and 5): five ``crop_size`` crops (the four corners and the
  centre) of the resized image plus their horizontal flips, run as one batch.

``flip=True`` adds the horizontally flipped image (``'ten_crop'`` always has its flips: they are part of the
protocol). Scores are softmax probabilities: they are averaged over the views of a scale (all windows, both flips;
the 10 crops), then over scales. The paper averages "scores"; reading them as softmax outputs with equal weight per
view and per scale is this project's choice where the paper does not say.

Example::

    predictor = MultiScalePredictor(OnnxBackend('a.onnx'), scales=(256, 384, 480), views=('dense',), flip=True)
    probs = predictor.predict(load_image('cat.jpg').image)      # (num_classes,) averaged over views and scales
"""
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import ConfigError, OnnxModelError, UserError
from .images import ImageError

__all__ = [
    'MultiScalePredictor', 'TorchBackend', 'OnnxBackend', 'ImageScores', 'ReceptiveField', 'receptive_field',
    'window_positions', 'crop_window_logits', 'softmax', 'VIEWS', 'DEFAULT_SCALES', 'DEFAULT_MAX_INPUT_PIXELS',
]

VIEWS = ('full', 'center', 'dense', 'ten_crop')
# The scales of the paper's Table 4. The set its multi-scale rows combine is not given ("as in SPP-net"): using these
# three for the combination is this project's choice.
DEFAULT_SCALES = (256, 384, 480)
# A resized image (shorter side = scale) larger than this is refused: e.g. a 1:20 panorama at s=480.
DEFAULT_MAX_INPUT_PIXELS = 4_000_000


@dataclass(frozen=True)
class ReceptiveField:
    """Geometry of one cell of the last conv map, in input pixels.

    Cell ``i`` sees input pixels ``[i * stride - padding, i * stride - padding + size - 1]``.
    """
    size: int
    stride: int
    padding: int

    @property
    def margin_cells(self) -> int:
        """Context (in cells) an image crop needs around a window for its cells to equal the full image's.

        Before the window: its first cell's field starts ``padding`` px before it. After: its last cell's field
        ends ``size - padding - 1`` px after that cell's start, i.e. ``size - padding - stride`` past its end.
        """
        after = self.size - self.padding - self.stride
        return max(math.ceil(self.padding / self.stride), math.ceil(after / self.stride))


def receptive_field(model: Any) -> ReceptiveField:
    """Receptive field of the last conv map of a PReLU-net (stem + stages: convs and max pools)."""
    import torch.nn as nn
    size, stride, padding = 1, 1, 0
    for m in nn.Sequential(model.stem, model.stages).modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k = m.kernel_size[0] if isinstance(m.kernel_size, tuple) else m.kernel_size
            s = m.stride[0] if isinstance(m.stride, tuple) else m.stride
            p = m.padding[0] if isinstance(m.padding, tuple) else m.padding
            d = m.dilation[0] if isinstance(m.dilation, tuple) else m.dilation
            size += (k - 1) * d * stride
            padding += p * stride
            stride *= s
    return ReceptiveField(size, stride, padding)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def window_positions(map_hw: Tuple[int, int], window: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Top-left cells of every window on a feature map, row-major (the window is clipped to the map)."""
    wh, ww = min(window[0], map_hw[0]), min(window[1], map_hw[1])
    return [(i, j) for i in range(map_hw[0] - wh + 1) for j in range(map_hw[1] - ww + 1)]


def _numpy_windows(features: np.ndarray, window: Tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) -> strided view (N, nh, nw, C, wh, ww) of every window, no copy."""
    from numpy.lib.stride_tricks import sliding_window_view
    wh, ww = min(window[0], features.shape[2]), min(window[1], features.shape[3])
    view = sliding_window_view(features, (wh, ww), axis=(2, 3))  # (N, C, nh, nw, wh, ww)
    return view.transpose(0, 2, 3, 1, 4, 5)


# ---------------------------------------------------------------------------------------------------------------
# Backends: the network split in the two halves the dense test needs; arrays in, numpy logits out


class TorchBackend:
    """A timm PReLU-net run by PyTorch (eval mode, no grad)."""

    def __init__(self, model: Any, device: Optional[str] = None) -> None:
        import torch
        self.torch = torch
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model = model.eval().to(self.device)
        self.pretrained_cfg: Dict[str, Any] = dict(getattr(model, 'pretrained_cfg', None) or {})
        self.num_classes = int(model.num_classes)
        self.min_input_size = int(getattr(model, 'min_input_size', 16))
        self.receptive_field = receptive_field(model)
        self.label_names: Optional[List[str]] = self.pretrained_cfg.get('label_names')
        self.supports_dense = True
        self.notes: List[str] = []

    def describe(self) -> str:
        return f'PyTorch {self.torch.__version__} ({self.device})'

    def _tensor(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Images (N, 3, H, W) -> logits (N, classes) through the whole network."""
        with self.torch.no_grad():
            return self.model(self._tensor(x)).float().cpu().numpy()

    def features(self, x: np.ndarray):
        """Images -> last conv feature map (a tensor on the model's device)."""
        with self.torch.no_grad():
            return self.model.forward_features(self._tensor(x))

    def map_logits(self, features) -> np.ndarray:
        """The head on each whole feature map: (N, classes)."""
        with self.torch.no_grad():
            return self.model.forward_head(features).float().cpu().numpy()

    def window_logits(self, features, window: Tuple[int, int], batch_size: int = 256) -> np.ndarray:
        """The head on every window of each map: (N, windows, classes), windows row-major."""
        torch = self.torch
        wh, ww = min(window[0], features.shape[2]), min(window[1], features.shape[3])
        with torch.no_grad():
            wins = features.unfold(2, wh, 1).unfold(3, ww, 1).permute(0, 2, 3, 1, 4, 5)  # a view: (N, nh, nw, C, ..)
            n, nh, nw = wins.shape[:3]
            out = []
            for start in range(0, n * nh * nw, batch_size):
                idx = torch.arange(start, min(start + batch_size, n * nh * nw), device=features.device)
                chunk = wins[idx // (nh * nw), (idx // nw) % nh, idx % nw]  # one copy per chunk: (len, C, wh, ww)
                out.append(self.model.forward_head(chunk).float().cpu())
        return self.torch.cat(out).numpy().reshape(n, -1, self.num_classes)


class OnnxBackend:
    """Exported graphs run by ONNX Runtime: the model graph, plus backbone and head graphs for dense views."""

    def __init__(
            self,
            model: Union[str, os.PathLike, Any],
            backbone: Union[str, os.PathLike, Any, None] = None,
            head: Union[str, os.PathLike, Any, None] = None,
            providers: Union[str, Sequence[str]] = 'auto',
            threads: Optional[int] = None,
            device_id: int = 0,
    ) -> None:
        """
        Args:
            model: The model graph (path or ``OnnxModel``), or None when only the split graphs are given.
            backbone: The backbone graph; default: the one exported beside ``model`` with ``split=True``, if any.
            head: The head graph; default as for ``backbone``.
            providers: 'auto', 'cpu', 'cuda' (see ``onnx_runtime.select_providers``).
            threads: CPU intra-op threads per session (default: onnxruntime's choice).
            device_id: The GPU of the CUDA provider.
        """
        from ..onnx_model.runtime import OnnxModel, OnnxModelError

        def load(x):
            return x if x is None or isinstance(x, OnnxModel) else OnnxModel(x, providers=providers, threads=threads,
                                                                              device_id=device_id)

        self.model, self.backbone, self.head = load(model), load(backbone), load(head)
        if self.model is not None and self.backbone is None and self.head is None:
            names = self.model.info.get('split')
            if names:
                b, h = self.model.path.with_name(names['backbone']), self.model.path.with_name(names['head'])
                if b.is_file() and h.is_file():
                    self.backbone, self.head = load(b), load(h)
        graphs = [g for g in (self.model, self.backbone, self.head) if g is not None]
        if not graphs:
            raise OnnxModelError('no ONNX graph given: pass the model graph, or the backbone and head graphs')
        for g, kind in ((self.model, 'model'), (self.backbone, 'backbone'), (self.head, 'head')):
            if g is not None and g.graph != kind:
                raise OnnxModelError(f'{g.path} is a {g.graph} graph, given as the {kind} graph: swap the files')
        if (self.backbone is None) != (self.head is None):
            raise OnnxModelError('dense views need both the backbone and the head graph: give both or neither')
        ids = {g.info['export_id'] for g in graphs}
        if len(ids) > 1:
            raise OnnxModelError(
                f'{", ".join(str(g.path) for g in graphs)} come from different exports: re-export with --split so '
                f'the graphs hold the same weights')
        first = graphs[0]
        self.pretrained_cfg: Dict[str, Any] = first.pretrained_cfg
        self.num_classes = int(first.info['num_classes'])
        self.min_input_size = int(first.info['min_input_size'])
        rf = first.info['receptive_field']
        self.receptive_field = ReceptiveField(rf['size'], rf['stride'], rf['padding'])
        self.label_names: Optional[List[str]] = self.pretrained_cfg.get('label_names')
        self.supports_dense = self.backbone is not None
        self.notes = sorted({n for g in graphs for n in g.notes})

    def describe(self) -> str:
        first = next(g for g in (self.model, self.backbone, self.head) if g is not None)
        kinds = '+'.join(g.graph for g in (self.model, self.backbone, self.head) if g is not None)
        return f'{first.describe()} [{kinds}]'

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.model is None:
            return self.map_logits(self.features(x))
        return self.model.run(x)

    def features(self, x: np.ndarray) -> np.ndarray:
        if self.backbone is None:
            raise OnnxModelError('dense views need the split graphs (backbone and head): export with split=True',
                                 param='views')
        return self.backbone.run(x)

    def map_logits(self, features: np.ndarray) -> np.ndarray:
        return self.head.run(features)

    def window_logits(self, features: np.ndarray, window: Tuple[int, int], batch_size: int = 256) -> np.ndarray:
        wins = _numpy_windows(features, window)  # a strided view; each chunk below is one copy
        n, nh, nw = wins.shape[:3]
        out = []
        for start in range(0, n * nh * nw, batch_size):
            idx = np.arange(start, min(start + batch_size, n * nh * nw))
            chunk = wins[idx // (nh * nw), (idx // nw) % nh, idx % nw]  # (len, C, wh, ww)
            out.append(self.head.run(np.ascontiguousarray(chunk)))
        return np.concatenate(out).reshape(n, nh * nw, -1)


# ---------------------------------------------------------------------------------------------------------------
# The predictor


@dataclass
class ImageScores:
    """Softmax scores of one image: ``probs[v, s]`` averaged over the views (windows, flips) of view mode ``v``
    at scale ``s``; ``num_views[v, s]`` says how many were averaged."""
    views: Tuple[str, ...]
    scales: Tuple[int, ...]
    probs: np.ndarray  # (V, S, classes)
    num_views: np.ndarray  # (V, S)
    notes: List[str] = field(default_factory=list)

    def multi_scale(self) -> np.ndarray:
        """The multi-scale combination of each view mode: scores averaged over scales, equal weight (V, classes)."""
        return self.probs.mean(axis=1)

    def combined(self, view: Optional[str] = None) -> np.ndarray:
        """Scores averaged over scales (equal weight), for one view mode or averaged over all of them."""
        per_view = self.multi_scale()
        return per_view[self.views.index(view)] if view is not None else per_view.mean(axis=0)


class MultiScalePredictor:
    """The paper's test-time protocol over a backend (:class:`TorchBackend` or :class:`OnnxBackend`)."""

    def __init__(
            self,
            backend: Union[TorchBackend, OnnxBackend],
            scales: Sequence[int] = DEFAULT_SCALES,
            views: Union[str, Sequence[str]] = ('dense',),
            flip: bool = True,
            window: Optional[int] = None,
            input_size: Optional[int] = None,
            head_batch: int = 256,
            max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
            crop_size: Optional[int] = None,
    ) -> None:
        """
        Args:
            backend: What runs the network.
            scales: Shorter-side sizes to test at (default: the paper's Table 4 scales 256, 384, 480).
            views: One or more of 'full', 'center', 'dense', 'ten_crop' (see the module docstring).
            flip: Also score the horizontally flipped image ('ten_crop' needs it: its flips are part of it).
            window: Dense window side on the feature map; default: the model's input size / feature stride (14).
            input_size: Training image size (default: the pretrained_cfg's); sets the centre crop and the window.
            head_batch: Windows per head call.
            max_input_pixels: Largest resized image accepted (protects memory from extreme aspect ratios).
            crop_size: Side of the 'center' and 'ten_crop' crops (default: ``input_size``, 224 for the paper's
                models); clipped to the resized image.
        """
        self.backend = backend
        self.views = (views,) if isinstance(views, str) else tuple(views)
        bad = [v for v in self.views if v not in VIEWS]
        if bad or not self.views:
            raise ConfigError(f'unknown view {bad or self.views}: choose from {", ".join(VIEWS)}', param='views')
        if 'ten_crop' in self.views and not flip:
            raise ConfigError("the 'ten_crop' view includes the horizontal flips of its five crops: keep flip=True, "
                              "or use the 'center' view for unflipped crops", param='flip')
        if 'dense' in self.views and not backend.supports_dense:
            raise OnnxModelError('dense views need the backbone and head graphs: export with split=True (they are '
                                 'written beside the model graph and found automatically)', param='views')
        if isinstance(scales, (str, bytes)) or not all(isinstance(s, (int, np.integer)) and s > 0 for s in scales):
            raise ConfigError(f'scales must be positive integers (pixels), got {scales!r}', param='scales')
        self.scales = tuple(int(s) for s in scales)
        if not self.scales:
            raise ConfigError('give at least one scale', param='scales')
        too_small = [s for s in self.scales if s < backend.min_input_size]
        if too_small:
            raise ConfigError(f'scale(s) {too_small} are below the network\'s minimum input of '
                              f'{backend.min_input_size} px: use larger scales', param='scales')
        cfg = backend.pretrained_cfg
        self.mean = np.asarray(cfg.get('mean', (0.485, 0.456, 0.406)), dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(cfg.get('std', (0.229, 0.224, 0.225)), dtype=np.float32).reshape(3, 1, 1)
        self.interpolation = cfg.get('interpolation', 'bilinear')
        cfg_size = tuple(cfg.get('input_size', (3, 224, 224)))[1:]
        self.input_size = (input_size, input_size) if input_size else (int(cfg_size[0]), int(cfg_size[1]))
        if crop_size is not None and crop_size < backend.min_input_size:
            raise ConfigError(f'crop_size {crop_size} is below the network\'s minimum input of '
                              f'{backend.min_input_size} px: use a larger crop', param='crop_size')
        self.crop_size = (crop_size, crop_size) if crop_size else self.input_size
        stride = backend.receptive_field.stride
        self.window = (window, window) if window else (max(1, self.input_size[0] // stride),
                                                        max(1, self.input_size[1] // stride))
        self.flip = flip
        self.head_batch = head_batch
        self.max_input_pixels = max_input_pixels

    def describe(self) -> str:
        return (f'{self.backend.describe()}; views {"/".join(self.views)}, scales {list(self.scales)}, '
                f'flip {"on" if self.flip else "off"}, window {self.window[0]}x{self.window[1]} cells, '
                f'crop {self.crop_size[0]}x{self.crop_size[1]}')

    # -- preprocessing -----------------------------------------------------------------------------------------

    def resize(self, image: Image.Image, scale: int) -> Image.Image:
        """Shorter side to ``scale`` with the model's interpolation (as timm's eval transform resizes)."""
        import torchvision.transforms.functional as TF
        from timm.data.transforms import str_to_interp_mode
        w, h = image.size
        short, long = min(w, h), max(w, h)
        new_long = int(scale * long / short)
        if scale * new_long > self.max_input_pixels:
            raise ImageError(
                f'image of {w}x{h} px resized to shorter side {scale} would be {new_long} px long '
                f'({scale * new_long / 1e6:.1f} Mpx, over the {self.max_input_pixels / 1e6:.1f} Mpx limit): crop it '
                f'to a less extreme aspect ratio')
        return TF.resize(image, scale, interpolation=str_to_interp_mode(self.interpolation))

    def to_array(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> normalised float32 (3, H, W)."""
        x = np.asarray(image.convert('RGB'), dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (x - self.mean) / self.std

    def preprocess(self, image: Image.Image, scale: int, view: str = 'full') -> np.ndarray:
        """The network input of one view mode at one scale: (1, or 2 with the flip, 3, H, W); (10, 3, h, w) for
        'ten_crop'."""
        return self._view_input(self.resize(image, scale), view)

    def crop_boxes(self, width: int, height: int) -> List[Tuple[int, int, int, int]]:
        """The 'ten_crop' boxes (left, top, right, bottom) on a ``width`` x ``height`` image: the four corners
        (top-left, top-right, bottom-left, bottom-right), then the centre (placed as the 'center' view places it)."""
        ch, cw = min(self.crop_size[0], height), min(self.crop_size[1], width)
        top, left = int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))
        corners = [(0, 0), (width - cw, 0), (0, height - ch), (width - cw, height - ch), (left, top)]
        return [(x, y, x + cw, y + ch) for x, y in corners]

    def _view_input(self, resized: Image.Image, view: str) -> np.ndarray:
        if view == 'ten_crop':
            x = self.to_array(resized)
            crops = np.stack([x[:, t:b, l:r] for l, t, r, b in self.crop_boxes(*resized.size)])
            return np.ascontiguousarray(np.concatenate([crops, crops[:, :, :, ::-1]]))  # the 5 crops, their flips
        if view == 'center':
            import torchvision.transforms.functional as TF
            ch, cw = min(self.crop_size[0], resized.size[1]), min(self.crop_size[1], resized.size[0])
            resized = TF.center_crop(resized, [ch, cw])
        x = self.to_array(resized)[None]
        if self.flip:
            x = np.concatenate([x, x[:, :, :, ::-1]])
        return np.ascontiguousarray(x)

    # -- scoring -----------------------------------------------------------------------------------------------

    def scores(self, image: Image.Image) -> ImageScores:
        """Scores of every (view mode, scale) for one RGB image."""
        probs = np.zeros((len(self.views), len(self.scales), self.backend.num_classes), dtype=np.float64)
        counts = np.zeros((len(self.views), len(self.scales)), dtype=np.int64)
        for si, scale in enumerate(self.scales):
            resized = self.resize(image, scale)
            x = self._view_input(resized, 'full') if ('full' in self.views or 'dense' in self.views) else None
            features = self.backend.features(x) if 'dense' in self.views else None
            for vi, view in enumerate(self.views):
                if view == 'dense':
                    logits = self.backend.window_logits(features, self.window, self.head_batch)
                    logits = logits.reshape(-1, logits.shape[-1])
                elif view == 'full':  # reuse the dense pass's features: the head takes the whole map
                    logits = self.backend.map_logits(features) if features is not None else self.backend.logits(x)
                else:  # 'center', 'ten_crop': crops of the resized image, one batch
                    logits = self.backend.logits(self._view_input(resized, view))
                if not np.isfinite(logits).all():  # broken weights or normalisation: never a NaN in a table
                    raise _nonfinite_error(self.backend, view, scale)
                p = softmax(logits.astype(np.float64))
                probs[vi, si] = p.mean(axis=0)
                counts[vi, si] = p.shape[0]
        return ImageScores(self.views, self.scales, probs, counts)

    def predict(self, image: Image.Image) -> np.ndarray:
        """Class probabilities averaged over views and scales: (num_classes,)."""
        return self.scores(image).combined()

    def topk(self, probs: np.ndarray, k: int = 5) -> List[Tuple[int, Optional[str], float]]:
        """The ``k`` best classes as (index, label or None, probability)."""
        names = self.backend.label_names
        descriptions = self.backend.pretrained_cfg.get('label_descriptions')
        order = np.argsort(-probs)[:k]
        label = (lambda i: descriptions[i]) if descriptions else (lambda i: names[i]) if names else (lambda i: None)
        return [(int(i), label(int(i)), float(probs[i])) for i in order]


def _nonfinite_error(backend: Union[TorchBackend, OnnxBackend], view: str, scale: int) -> UserError:
    from ..errors import CheckpointError, OnnxModelError
    kind = OnnxModelError if isinstance(backend, OnnxBackend) else CheckpointError
    return kind(f'the model gave non-finite scores (NaN or inf) for the {view} view at scale {scale}: its weights or '
                f'its normalisation (mean / std) are broken; use other weights or re-export the model', param='model')


def crop_window_logits(
        backend: Union[TorchBackend, OnnxBackend],
        x: np.ndarray,
        window: Tuple[int, int],
        positions: Sequence[Tuple[int, int]],
        margin: Optional[int] = None,
) -> np.ndarray:
    """Dense-window logits recomputed the slow way: the whole network on an image crop per window.

    ``margin`` cells of context are kept around each window's ``stride * window`` pixels (clipped at the image).
    With the default (the receptive field's ``margin_cells``) no zero padding reaches the window's cells, so the
    result equals the dense window on the full image's feature map; ``margin=0`` is the naive crop of exactly the
    window's pixels (e.g. 224 x 224), where padding replaces the context and the scores differ.

    Args:
        backend: A backend with ``features`` and ``map_logits`` (a TorchBackend, or an OnnxBackend with --split).
        x: One normalised image (1, 3, H, W).
        window: Window size in cells.
        positions: Top-left cells of the windows to recompute (from :func:`window_positions`).
        margin: Context in cells (None: exact).

    Returns:
        (len(positions), classes) logits.
    """
    rf = backend.receptive_field
    m = rf.margin_cells if margin is None else margin
    h, w = x.shape[2], x.shape[3]
    fh, fw = _map_size(h, rf.stride), _map_size(w, rf.stride)
    wh, ww = min(window[0], fh), min(window[1], fw)
    out = []
    for i, j in positions:
        r0, c0 = max(0, i - m), max(0, j - m)
        r1, c1 = min(fh, i + wh + m), min(fw, j + ww + m)
        # a crop that reaches the map's last cell keeps the image's trailing pixels too (they feed that cell)
        y1 = h if r1 == fh else r1 * rf.stride
        x1 = w if c1 == fw else c1 * rf.stride
        crop = np.ascontiguousarray(x[:, :, r0 * rf.stride:y1, c0 * rf.stride:x1])
        feats = backend.features(crop)
        out.append(backend.map_logits(feats[:, :, i - r0:i - r0 + wh, j - c0:j - c0 + ww]))
    return np.concatenate(out)


def _map_size(size: int, stride: int) -> int:
    """Feature map side of the PReLU-nets: the stem halves with ceil ((n - 1) // 2 + 1), each pool floors."""
    n = (size - 1) // 2 + 1
    s = 2
    while s < stride:
        n //= 2
        s *= 2
    return n
