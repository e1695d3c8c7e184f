"""Section 1: what PReLU costs over ReLU (the paper: "negligible").

The same network is built once per rectifier (channel-wise PReLU, channel-shared PReLU, ReLU) and timed in
interleaved rounds: inference forward passes and training forward + backward passes (loss included; the optimizer
update is left out, it is identical for all and would only dilute the ratio). Also a single conv block, where the
rectifier's share of the time is largest. A fourth variant, ``prelu_torch``, is the channel-wise PReLU with
PyTorch's own gradient kernel (plain ``nn.PReLU``): it shows why the project's PReLU
(``timm_prelu.layers.activations.PReLU``) replaces that kernel.
"""
from typing import Callable, Dict, List, Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.prelu_net import ConvAct
from .machine import model_label
from .timer import interleaved, sync_for

__all__ = ['ACTS', 'activation_cost', 'with_torch_prelu']

ACTS = ('relu', 'prelu', 'prelu_shared', 'prelu_torch')
MODES = ('forward', 'forward+backward')


def with_torch_prelu(model: nn.Module) -> nn.Module:
    """The model with every PReLU replaced by a plain ``nn.PReLU`` sharing its slopes (PyTorch's own kernels)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.PReLU) and type(child) is not nn.PReLU:
                plain = nn.PReLU(child.num_parameters)
                plain.weight = child.weight
                setattr(module, name, plain)
    return model


def _build(act: str, build: Callable[[str], nn.Module]) -> nn.Module:
    if act == 'prelu_torch':
        return with_torch_prelu(build('prelu'))
    return build(act)


def _step(model: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    if mode == 'forward':
        model.eval()

        def forward() -> None:
            with torch.no_grad():
                model(x)
        return forward

    model.train()
    target = None

    def forward_backward() -> None:
        nonlocal target
        model.zero_grad(set_to_none=True)
        out = model(x)
        if out.dim() == 2:
            if target is None:
                target = torch.arange(out.shape[0], device=out.device) % out.shape[1]
            loss = F.cross_entropy(out, target)
        else:  # a conv block: any scalar of its output exercises the same backward
            loss = out.mean()
        loss.backward()
    return forward_backward


def _time_variants(builders: Dict[str, Callable[[], nn.Module]], x: torch.Tensor, target: str, device: str,
                   repeats: int, warmup: int, budget_s: Optional[float], progress) -> List[Dict]:
    rows = []
    models = {act: build().to(device) for act, build in builders.items()}
    for mode in MODES:
        if progress is not None:
            progress(f'rectifiers: {target}, {mode}')
        stats = interleaved({act: _step(m, x, mode) for act, m in models.items()}, repeats=repeats, warmup=warmup,
                            budget_s=budget_s, sync=sync_for(device))
        ref = stats['relu'].median
        for act, s in stats.items():
            rows.append(dict(
                target=target, mode=mode, act=act, **_ms(s.summary()),
                ratio_vs_relu=s.median / ref, iqr_pct=s.iqr_pct))
    return rows


def _ms(summary: Dict) -> Dict:
    return {k.replace('_s', '_ms') if k.endswith('_s') else k: v * 1e3 if k.endswith('_s') else v
            for k, v in summary.items()}


def activation_cost(
        device: str = 'cpu',
        model_name: str = 'prelu_model_a',
        model_kwargs: Optional[Dict] = None,
        img_size: int = 224,
        batch_size: int = 1,
        block_channels: int = 256,
        block_size: int = 56,
        repeats: int = 5,
        warmup: int = 1,
        budget_s: Optional[float] = None,
        progress: Optional[Callable[[str], None]] = None,
) -> List[Dict]:
    """Median time (ms) and ratio to ReLU of each rectifier, for the whole model and for one conv block.

    Args:
        model_name: The network (model A: the paper's ReLU-vs-PReLU comparison).
        model_kwargs: Extra kwargs (e.g. width_mult / fc_dim for a quick run).
        block_channels, block_size: The conv block: a 3x3 conv of this many channels in and out plus the
            rectifier, on a block_size x block_size map (model A's first stage: 256 channels at 56 x 56).
        repeats, warmup, budget_s: See :func:`timer.interleaved`.
        progress: Called with the name of each step as it starts.

    Returns:
        One row per (target, mode, act): n, median_ms, q1_ms, q3_ms, min_ms, max_ms, ratio_vs_relu, iqr_pct.
    """
    model_kwargs = dict(model_kwargs or {})
    gen = torch.Generator().manual_seed(0)
    x_model = torch.randn(batch_size, 3, img_size, img_size, generator=gen).to(device)
    x_block = torch.randn(batch_size, block_channels, block_size, block_size, generator=gen).to(device)

    def model_builder(act: str) -> Callable[[], nn.Module]:
        return lambda: _build(act, lambda a: timm.create_model(model_name, act=a, **model_kwargs))

    def block_builder(act: str) -> Callable[[], nn.Module]:
        return lambda: _build(act, lambda a: ConvAct(block_channels, block_channels, 3, 1, a))

    label = model_label(model_name)
    rows = _time_variants({a: model_builder(a) for a in ACTS}, x_model, f'{label} @{img_size}', device,
                          repeats, warmup, budget_s, progress)
    rows += _time_variants({a: block_builder(a) for a in ACTS}, x_block,
                           f'conv block {block_channels}ch @{block_size}', device, repeats, warmup, budget_s, progress)
    for row in rows:
        row.update(batch=batch_size)
    return rows
