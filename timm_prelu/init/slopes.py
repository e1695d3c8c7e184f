"""Learned PReLU slopes per layer (the paper's Table 1 observation: larger in early layers, smaller deep).

Slopes are read from any model source :func:`timm_prelu.sources.resolve_model` takes: a timm train.py checkpoint,
a ``.safetensors`` file, a hub id or folder, or a model built by name.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch.nn as nn

from ..formatting import markdown_table
from ..errors import ConfigError

__all__ = ['LayerSlopes', 'layer_slopes', 'load_slopes', 'format_slopes', 'plot_slopes']

@dataclass
class LayerSlopes:
    """The slopes of one PReLU: ``depth`` counts PReLUs in forward order (1 = first)."""
    depth: int
    name: str
    channels: int
    mean: float
    min: float
    max: float


def layer_slopes(model: nn.Module) -> List[LayerSlopes]:
    """Mean / min / max slope of every PReLU of ``model``, in module order (forward order for timm's nets)."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, nn.PReLU):
            a = m.weight.detach().float().flatten()
            rows.append(LayerSlopes(len(rows) + 1, name, a.numel(), float(a.mean()), float(a.min()), float(a.max())))
    return rows


def load_slopes(
        source: Union[str, os.PathLike, nn.Module],
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        use_ema: bool = False,
        pretrained: bool = False,
        num_classes: Optional[int] = None,
) -> List[LayerSlopes]:
    """Slopes per layer of any model source (see :func:`timm_prelu.sources.resolve_model`): a checkpoint, a
    .safetensors file, a hub id or folder, a timm model name (``pretrained`` downloads its weights) or a module."""
    from ..sources import resolve_model
    model = resolve_model(source, model_name=model_name, model_kwargs=model_kwargs, num_classes=num_classes,
                          use_ema=use_ema, pretrained=pretrained).model
    rows = layer_slopes(model)
    if not rows:
        raise ConfigError(f'{source if isinstance(source, (str, os.PathLike)) else type(source).__name__} has no '
                          f'PReLU layers (not a PReLU-net, or built with act=relu): slopes exist only for PReLU '
                          f'activations', param='source')
    return rows


def format_slopes(rows: List[LayerSlopes]) -> str:
    """A Markdown table, one row per PReLU, by depth."""
    return markdown_table(['depth', 'layer', 'channels', 'mean', 'min', 'max'],
                          [[r.depth, r.name, r.channels, f'{r.mean:.4f}', f'{r.min:.4f}', f'{r.max:.4f}'] for r in rows])


def plot_slopes(rows: List[LayerSlopes], path: Union[str, os.PathLike], title: str = '') -> Path:
    """Mean slope per layer with its min-max range, written atomically as PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from ..outputs import save_figure
    path = Path(path)
    depth = [r.depth for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.fill_between(depth, [r.min for r in rows], [r.max for r in rows], alpha=0.25, label='min - max over channels')
    ax.plot(depth, [r.mean for r in rows], marker='o', label='mean')
    ax.axhline(0.25, color='gray', linestyle=':', linewidth=0.8, label='initial slope 0.25')
    ax.set_xticks(depth)
    ax.set_xticklabels([r.name for r in rows], rotation=60, ha='right', fontsize=7)
    ax.set_ylabel('PReLU slope a')
    ax.set_title(title or 'Learned PReLU slopes by depth')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
