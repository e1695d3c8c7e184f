"""Variance probe: the std of every layer's responses and gradients at initialisation (paper, section 2.2).

The paper's derivation: y_l = W_l x_l with x_l = f(y_{l-1}) gives Var[y_l] = n_l Var[w_l] E[x_l^2], and for a
rectifier of slope a, E[x_l^2] = 1/2 (1 + a^2) Var[y_{l-1}]. He init makes each factor 1/2 (1 + a^2) n_l Var[w_l]
equal to 1, so the response std stays put across depth; Xavier (n_l Var[w_l] = 1) leaves the factor 1/2 for ReLU,
so the variance halves at every layer (the paper's 1/2^L). The backward pass mirrors this with n^_l = k^2 d.
This module measures both: one batch forward (responses y_l, the layers' outputs before their rectifiers) and one
backward of a unit-variance Gaussian gradient from the output (gradients dL/dy_l).
"""
import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import ModelSourceError
from .rules import LAYER_TYPES, InitReport, init_weights_
from ..outputs import save_figure

__all__ = ['LayerStats', 'probe_variance', 'probe_rule', 'probe_inits', 'format_probe_table', 'summarize_probe',
           'plot_probe', 'create_model']


@dataclass
class LayerStats:
    """One conv / linear call: ``index`` is its depth (1 = first layer run)."""
    index: int
    name: str
    kind: str
    response_std: float
    grad_std: float


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)) and out:
        return _first_tensor(out[0])
    if isinstance(out, Mapping) and out:
        return _first_tensor(next(iter(out.values())))
    raise ModelSourceError(f'the model returned {type(out).__name__}, not a tensor: the probe needs a tensor output')


def probe_variance(
        model: nn.Module,
        x: torch.Tensor,
        generator: Optional[torch.Generator] = None,
) -> List[LayerStats]:
    """Std of each conv / linear layer's output y_l and of dL/dy_l, for a batch ``x`` and a random output gradient.

    The model runs in eval mode (no dropout noise); its parameters' ``.grad`` are left untouched.
    """
    records: List[tuple] = []

    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        records.append((names[module], type(module).__name__, out))
        return out.clone()  # an in-place rectifier after the layer then changes the copy, not y_l

    names = {m: n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    handles = [m.register_forward_hook(hook) for m in names]
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            out = _first_tensor(model(x))
            if not records:
                raise ModelSourceError(f'{type(model).__name__} ran no conv or linear layer: nothing to probe')
            grad = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
            grads = torch.autograd.grad(out, [r[2] for r in records], grad, allow_unused=True)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    stats = []
    for i, ((name, kind, y), g) in enumerate(zip(records, grads), start=1):
        grad_std = float(g.float().std()) if g is not None else float('nan')
        stats.append(LayerStats(i, name, kind, float(y.detach().float().std()), grad_std))
    return stats


def probe_rule(
        model: nn.Module,
        x: torch.Tensor,
        rule: str,
        seed: int = 0,
        **init_kwargs: Any,
) -> Tuple[InitReport, List[LayerStats]]:
    """Initialise a copy of ``model`` with ``rule`` (``init_kwargs`` go to it) and probe it: (init report, stats)."""
    model_copy = copy.deepcopy(model)
    report = init_weights_(model_copy, rule, generator=torch.Generator().manual_seed(seed), **init_kwargs)
    return report, probe_variance(model_copy, x, generator=torch.Generator().manual_seed(seed + 1))


def probe_inits(
        model: nn.Module,
        x: torch.Tensor,
        rules: Sequence[str] = ('he', 'xavier'),
        seed: int = 0,
        init_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Dict[str, List[LayerStats]]:
    """Probe a copy of ``model`` initialised with each rule (same seed); ``init_kwargs[rule]`` go to the rule."""
    return {rule: probe_rule(model, x, rule, seed, **(init_kwargs or {}).get(rule, {}))[1] for rule in rules}


def summarize_probe(results: Mapping[str, List[LayerStats]]) -> Dict[str, Dict[str, float]]:
    """Per rule: last / first layer response std, first / last layer gradient std, and the geometric-mean factor
    by which the response variance changes per layer."""
    summary = {}
    for rule, stats in results.items():
        first, last = stats[0], stats[-1]
        steps = max(len(stats) - 1, 1)
        summary[rule] = {
            'response_last_over_first': last.response_std / first.response_std,
            'grad_first_over_last': first.grad_std / last.grad_std,
            'variance_factor_per_layer': (last.response_std / first.response_std) ** (2.0 / steps),
        }
    return summary


def format_probe_table(results: Mapping[str, List[LayerStats]]) -> str:
    """A Markdown table, one row per layer, a response and a gradient column per rule, then the summary."""
    rules = list(results)
    base = results[rules[0]]
    head = ' | '.join(f'{r} std(y) | {r} std(dL/dy)' for r in rules)
    lines = [f'| # | layer | type | {head} |', '|---|---|---|' + '---|---|' * len(rules)]
    for i, s in enumerate(base):
        cells = ' | '.join(f'{results[r][i].response_std:.3e} | {results[r][i].grad_std:.3e}' for r in rules)
        lines.append(f'| {s.index} | {s.name} | {s.kind} | {cells} |')
    lines.append('')
    for rule, values in summarize_probe(results).items():
        lines.append(f'{rule}: last/first response std {values["response_last_over_first"]:.3g}, '
                     f'first/last gradient std {values["grad_first_over_last"]:.3g}, '
                     f'response variance x{values["variance_factor_per_layer"]:.3f} per layer')
    return '\n'.join(lines)


def plot_probe(results: Mapping[str, List[LayerStats]], path: Union[str, os.PathLike], title: str = '') -> Path:
    """Response and gradient std per layer on a log scale, one line per init rule; written atomically as PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for rule, stats in results.items():
        depth = [s.index for s in stats]
        axes[0].plot(depth, [s.response_std for s in stats], marker='.', label=rule)
        axes[1].plot(depth, [s.grad_std for s in stats], marker='.', label=rule)
    for ax, what in zip(axes, ('response std(y_l) (forward)', 'gradient std(dL/dy_l) (backward)')):
        ax.set_yscale('log')
        ax.set_xlabel('layer (conv / fc, in execution order)')
        ax.set_title(what)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """'plainN' for the plain N-layer ReLU net of the depth experiment, else any model source
    :func:`timm_prelu.sources.resolve_model` takes (a timm name, checkpoint, hub id or folder); ``kwargs`` are
    model arguments. The probe re-initialises the weights, so none are downloaded for a plain name."""
    from ..sources import resolve_model
    from .plain_net import create_plain_net, is_plain_net_name
    if is_plain_net_name(name):
        return create_plain_net(name, **kwargs)
    return resolve_model(name, model_kwargs=kwargs).model
