"""Benchmark section 4: the paper's dense multi-view test vs naively cropping each view and running the whole network.

Dense (paper, section 3, as :class:`timm_prelu.inference.MultiScalePredictor` runs it): the convolutions run
once on the image resized to scale s, then every 14 x 14 window of the last conv map goes through SPP and the fc
layers, batched. Naive: for every one of those windows, crop the image region it corresponds to (224 x 224 px at
a 16 px stride) and run the full network on the crop. The views are the same; the scores are not exactly: a
convolution at a crop's border sees zero padding where the dense pass sees the neighbouring pixels. So we check
two things: (a) the dense windows equal running the head on each window cut explicitly from the feature map, and
the whole network on image crops wide enough to hold each window's receptive field (both within 1e-4); and (b)
how far the naive 224 crops' scores are from the dense ones, beside the speed-up.
"""
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from ..inference.predictor import MultiScalePredictor, TorchBackend, crop_window_logits, softmax, window_positions
from .timer import interleaved, repeats_for_budget, sync_for

__all__ = ['dense_vs_crops', 'EXACT_TOLERANCE']

EXACT_TOLERANCE = 1e-4


def _test_image(size: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB test image (smooth colour fields plus noise), size x size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1) * 80 + 128
    pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _macs(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 2


def _naive_crops(x: np.ndarray, positions: Sequence[Tuple[int, int]], crop: int, stride: int) -> List[np.ndarray]:
    return [x[:, :, i * stride:i * stride + crop, j * stride:j * stride + crop] for i, j in positions]


def dense_vs_crops(
        device: str = 'cpu',
        model_name: str = 'prelu_model_a',
        model_kwargs: Optional[Dict] = None,
        scales: Sequence[int] = (256, 384),
        crop_batch: int = 8,
        exact_crops: int = 2,
        repeats: int = 3,
        budget_s: Optional[float] = None,
        progress: Optional[Callable[[str], None]] = None,
) -> Tuple[List[Dict], List[Dict]]:
    """Time dense vs naive-crop evaluation at each scale and check the scores.

    Args:
        model_name, model_kwargs: The network (model A; narrow kwargs for a quick run).
        scales: Image sides to test at (the image is square, so the shorter side is the scale).
        crop_batch: Naive crops per forward pass.
        exact_crops: How many windows (spread over the map) to recompute from receptive-field-wide image crops
            (each costs about a full-image forward pass).
        repeats, budget_s: Timed rounds (see :func:`timer.interleaved`).
        progress: Called with the name of each step as it starts.

    Returns:
        (timing rows, check rows), one of each per scale.
    """
    model = timm.create_model(model_name, **(model_kwargs or {})).eval().to(device)
    backend = TorchBackend(model, device)
    stride = backend.receptive_field.stride
    sync = sync_for(device)
    timing, checks = [], []
    for scale in scales:
        if progress is not None:
            progress(f'dense vs crops, scale {scale}')
        predictor = MultiScalePredictor(backend, scales=(scale,), views=('dense',), flip=False)
        window = predictor.window
        image = _test_image(scale)
        x = predictor.preprocess(image, scale)  # (1, 3, s, s), normalised
        with torch.no_grad():
            feats = backend.features(x)
        map_hw = tuple(feats.shape[2:])
        positions = window_positions(map_hw, window)
        crop = window[0] * stride
        crops = _naive_crops(x, positions, crop, stride)

        def dense() -> np.ndarray:
            return backend.window_logits(backend.features(x), window)[0]

        def naive() -> np.ndarray:
            return np.concatenate([backend.logits(np.ascontiguousarray(np.concatenate(crops[k:k + crop_batch])))
                                   for k in range(0, len(crops), crop_batch)])

        start = time.perf_counter()
        dense_logits, naive_logits = dense(), naive()  # the warm-up round, whose scores are checked below
        sync()
        if budget_s is not None:
            repeats = repeats_for_budget(time.perf_counter() - start, budget_s, repeats, 4 * repeats)
        stats = interleaved({'dense': dense, 'naive crops': naive}, repeats=repeats, warmup=0, sync=sync)
        macs_dense = _macs(dense)
        macs_naive = _macs(naive)
        d, nv = stats['dense'], stats['naive crops']
        timing.append(dict(
            scale=scale, map=f'{map_hw[0]}x{map_hw[1]}', windows=len(positions), n=d.n,
            dense_median_ms=d.median * 1e3, dense_q1_ms=d.q1 * 1e3, dense_q3_ms=d.q3 * 1e3,
            naive_median_ms=nv.median * 1e3, naive_q1_ms=nv.q1 * 1e3, naive_q3_ms=nv.q3 * 1e3,
            speedup=nv.median / d.median, dense_gmacs=macs_dense / 1e9, naive_gmacs=macs_naive / 1e9,
            mac_ratio=macs_naive / macs_dense))

        # (a) exactness of the dense windows
        with torch.no_grad():
            explicit = np.concatenate([
                backend.map_logits(feats[:, :, i:i + window[0], j:j + window[1]].contiguous()) for i, j in positions])
        pick = sorted({round(k * (len(positions) - 1) / max(1, exact_crops - 1)) for k in range(exact_crops)})
        exact = crop_window_logits(backend, x, window, [positions[k] for k in pick])
        predicted = predictor.scores(image).probs[0, 0]
        dense_probs = softmax(dense_logits.astype(np.float64))
        naive_probs = softmax(naive_logits.astype(np.float64))
        checks.append(dict(
            scale=scale, windows=len(positions),
            featmap_crop_max_abs_diff=float(np.abs(explicit - dense_logits).max()),
            context_crop_max_abs_diff=float(np.abs(exact - dense_logits[pick]).max()),
            context_crops_checked=len(pick),
            predictor_max_abs_diff=float(np.abs(predicted - dense_probs.mean(0)).max()),
            # (b) what the naive 224 crops change
            mean_abs_logit=float(np.abs(dense_logits).mean()),
            naive_mean_abs_logit_diff=float(np.abs(naive_logits - dense_logits).mean()),
            naive_top1_agreement_pct=100.0 * float((naive_logits.argmax(1) == dense_logits.argmax(1)).mean()),
            naive_avg_prob_max_abs_diff=float(np.abs(naive_probs.mean(0) - dense_probs.mean(0)).max()),
            avg_top1_same=bool(naive_probs.mean(0).argmax() == dense_probs.mean(0).argmax()),
        ))
    return timing, checks
