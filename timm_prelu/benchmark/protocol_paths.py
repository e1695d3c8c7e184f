"""Section: the whole test protocol as one ONNX graph vs the split graphs driven from Python, and the fully
convolutional dense head vs the window-batched head.

(a) Per image, from the decoded image to the averaged probabilities, at one scale at a time: the protocol graph
(:func:`timm_prelu.onnx_model.protocol.export_protocol`: resize, normalisation, flip, views and averaging inside
ONNX Runtime) against :class:`~timm_prelu.inference.predictor.MultiScalePredictor` over an
:class:`~timm_prelu.inference.predictor.OnnxBackend` with the backbone and head graphs (PIL resize, NumPy views,
the head run on batches of windows). (b) On the same feature map in PyTorch: :class:`DenseHead` (stride-1 max
pools and 1x1 convolutions over every window at once) against the head run on batches of windows cut from the map.
Both are timed interleaved in one run, so their ratio holds on a shared machine.
"""
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from PIL import Image

from .timer import interleaved

__all__ = ['protocol_paths']


def _test_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1) * 80 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))


def _ms(stats) -> Dict[str, float]:
    return dict(n=stats.n, median_ms=1e3 * stats.median, q1_ms=1e3 * stats.q1, q3_ms=1e3 * stats.q3)


def protocol_paths(
        model_name: str = 'prelu_model_a',
        model_kwargs: Optional[Dict] = None,
        scales: Sequence[int] = (256, 384, 480),
        protocols: Sequence[str] = ('dense', 'ten_crop'),
        crop_size: Optional[int] = None,
        image_hw: Tuple[int, int] = (500, 375),
        head_batch: int = 256,
        repeats: int = 3,
        threads: Optional[int] = None,
        workdir: Optional[Path] = None,
        progress: Optional[Callable[[str], None]] = None,
) -> Tuple[List[Dict], List[Dict]]:
    """Time (a) the protocol graph vs the split-graph predictor per image and (b) the dense heads; returns the
    rows of (a) and of (b)."""
    import onnxruntime as ort
    from ..inference.predictor import MultiScalePredictor, OnnxBackend, TorchBackend
    from ..onnx_model.export import export_onnx
    from ..onnx_model.protocol import (DenseHead, ProtocolModel, _export_part, _IMAGE_DIMS, _Preprocess, _Score,
                                       _score_dims, _score_example, _stitch)
    torch.manual_seed(0)
    model = timm.create_model(model_name, **(model_kwargs or {})).eval()
    with torch.no_grad():  # untrained weights give near-uniform scores; perturbed, a difference would show
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    crop = int(crop_size or model.pretrained_cfg.get('input_size', (3, 224, 224))[-1])
    image = _test_image(*image_hw)
    pixels = np.asarray(image)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix='protocol-') as tmp:
        split = Path(tmp) / 'model.onnx'
        export_onnx(model, split, split=True, input_size=crop, verify=False)
        backend = OnnxBackend(split, providers='cpu', threads=threads)
        for protocol in protocols:
            net = ProtocolModel(model, protocol, scales, flip=True, crop_size=crop)
            with torch.no_grad():  # the scoring network once per protocol, the resize once per scale
                score = _export_part(_Score(net), 'x', _score_dims(net), _score_example(net), None)
                for s in scales:
                    if progress:
                        progress(f'protocol graph {protocol} at {s}')
                    pre = _export_part(_Preprocess(net, s), 'image', _IMAGE_DIMS, (s, s + 1, 3), None, torch.uint8)
                    session = ort.InferenceSession(_stitch([pre], score, int(model.num_classes)).SerializeToString(),
                                                   options, providers=['CPUExecutionProvider'])
                    predictor = MultiScalePredictor(backend, scales=(s,), views=protocol, flip=True,
                                                    input_size=crop, crop_size=crop, head_batch=head_batch)
                    graph_probs = session.run(['probs'], {'image': pixels})[0]
                    python_probs = predictor.predict(image)
                    stats = interleaved({'graph': lambda: session.run(['probs'], {'image': pixels}),
                                         'python': lambda: predictor.predict(image)}, repeats=repeats)
                    g, p = _ms(stats['graph']), _ms(stats['python'])
                    rows.append(dict(protocol=protocol, scale=s, image=f'{image_hw[1]}x{image_hw[0]}', n=g['n'],
                                     graph_median_ms=g['median_ms'], graph_q1_ms=g['q1_ms'], graph_q3_ms=g['q3_ms'],
                                     python_median_ms=p['median_ms'], python_q1_ms=p['q1_ms'],
                                     python_q3_ms=p['q3_ms'], speedup=p['median_ms'] / g['median_ms'],
                                     max_abs_diff=float(np.abs(graph_probs - python_probs).max()),
                                     same_top1=bool(graph_probs.argmax() == python_probs.argmax())))
    head_rows: List[Dict] = []
    torch_backend = TorchBackend(model, device='cpu')
    stride = torch_backend.receptive_field.stride
    window = crop // stride
    dense = DenseHead(model, window).eval()
    for s in scales:
        if progress:
            progress(f'dense heads at {s}')
        predictor = MultiScalePredictor(torch_backend, scales=(s,), views='dense', input_size=crop)
        x = predictor.preprocess(image, s)[:1]
        with torch.no_grad():
            features = model.forward_features(torch.from_numpy(x))
            conv = dense(features)
        batched = torch_backend.window_logits(features, (window, window), head_batch)  # (1, windows, classes)

        def run_dense():
            with torch.no_grad():
                dense(features)

        stats = interleaved({'conv': run_dense,
                             'batched': lambda: torch_backend.window_logits(features, (window, window), head_batch)},
                            repeats=repeats)
        c, b = _ms(stats['conv']), _ms(stats['batched'])
        diff = np.abs(conv.flatten(2).transpose(1, 2).numpy() - batched).max()
        head_rows.append(dict(scale=s, map=f'{features.shape[-2]}x{features.shape[-1]}',
                              windows=int(batched.shape[1]), n=c['n'], conv_median_ms=c['median_ms'],
                              conv_q1_ms=c['q1_ms'], conv_q3_ms=c['q3_ms'], batched_median_ms=b['median_ms'],
                              batched_q1_ms=b['q1_ms'], batched_q3_ms=b['q3_ms'],
                              speedup=b['median_ms'] / c['median_ms'], max_abs_diff=float(diff)))
    return rows, head_rows
