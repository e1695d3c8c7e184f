"""Section 5: inference time and peak memory vs input scale and vs batch, with fitted power laws.

The convolutions dominate and their work grows with the number of pixels, so time ~ pixels^1 is the expectation
(the fc head is a fixed cost thanks to SPP, which pulls the exponent slightly below 1 at small sizes). The exponent
is the least-squares slope of log(time) against log(pixels) (and of log(memory), and against log(batch)).
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch

from ..models.complexity import count_macs
from .memory import peak_memory_mib
from .timer import interleaved, sync_for

__all__ = ['scaling', 'fit_power_law']


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> Tuple[float, float]:
    """Exponent b and R^2 of y = a * x^b by least squares in log-log."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    b, a = np.polyfit(lx, ly, 1)
    residual = ly - (a + b * lx)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = 1.0 - float((residual ** 2).sum() / total) if total > 0 else 1.0
    return float(b), r2


def _sweep(model, configs: Sequence[Tuple[int, int]], sweep: str, device: str, repeats: int, warmup: int,
           budget_s: Optional[float], progress) -> List[Dict]:
    if progress is not None:
        progress(f'scaling vs {sweep}')
    gen = torch.Generator().manual_seed(0)
    inputs = {cfg: torch.randn(cfg[1], 3, cfg[0], cfg[0], generator=gen).to(device) for cfg in configs}

    def call(cfg):
        def run():
            with torch.no_grad():
                return model(inputs[cfg])
        return run

    fns = {cfg: call(cfg) for cfg in configs}
    stats = interleaved(fns, repeats=repeats, warmup=warmup, budget_s=budget_s, sync=sync_for(device))
    rows = []
    for (size, batch), s in stats.items():
        peak = [peak_memory_mib(fns[(size, batch)], device) for _ in range(2)]
        rows.append(dict(
            sweep=sweep, img_size=size, batch=batch, pixels=batch * size * size, n=s.n,
            median_ms=s.median * 1e3, q1_ms=s.q1 * 1e3, q3_ms=s.q3 * 1e3, min_ms=s.min * 1e3, max_ms=s.max * 1e3,
            gmacs=count_macs(model, (3, size, size)) * batch / 1e9,
            peak_mib=None if peak[0] is None else max(peak)))
    return rows


def scaling(
        device: str = 'cpu',
        model_name: str = 'prelu_model_a',
        model_kwargs: Optional[Dict] = None,
        scales: Sequence[int] = (224, 288, 352, 416, 480, 544, 640),
        batches: Sequence[int] = (1, 2, 4, 8),
        batch_size: int = 1,
        img_size: int = 224,
        repeats: int = 3,
        warmup: int = 1,
        budget_s: Optional[float] = None,
        progress: Optional[Callable[[str], None]] = None,
) -> Tuple[List[Dict], List[Dict]]:
    """Eager inference time and peak memory over ``scales`` (at ``batch_size``) and ``batches`` (at ``img_size``).

    Returns:
        (rows, fits): one row per configuration; one fit per (sweep, quantity) with the exponent and R^2.
    """
    model = timm.create_model(model_name, **(model_kwargs or {})).eval().to(device)
    rows = _sweep(model, [(s, batch_size) for s in scales], 'scale', device, repeats, warmup, budget_s, progress)
    rows += _sweep(model, [(img_size, b) for b in batches], 'batch', device, repeats, warmup, budget_s, progress)
    fits = []
    for sweep, against in (('scale', 'pixels'), ('batch', 'batch')):
        part = [r for r in rows if r['sweep'] == sweep]
        x = [r[against] for r in part]
        for quantity, key in (('time', 'median_ms'), ('peak memory', 'peak_mib')):
            if any(r[key] is None or r[key] <= 0 for r in part):
                continue
            exponent, r2 = fit_power_law(x, [r[key] for r in part])
            fits.append(dict(sweep=sweep, quantity=quantity, against=against, exponent=exponent, r2=r2,
                             points=len(part)))
    return rows, fits
