"""Learned PReLU slopes per layer (the paper's Table 1 observation: larger in early layers, smaller deep).

Slopes are read from a model built by name (``timm.create_model``), or from weights: a timm train.py checkpoint
(``*.pth.tar``, read with ``torch.load(weights_only=True)``) or a ``.safetensors`` file, rebuilt with the
architecture they record (see :mod:`timm_prelu.checkpoints`).
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch.nn as nn

from ..errors import UserError

__all__ = ['LayerSlopes', 'layer_slopes', 'load_slopes', 'format_slopes', 'plot_slopes']

CHECKPOINT_SUFFIXES = ('.pth.tar', '.pth', '.pt', '.tar', '.bin', '.safetensors')


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


def _looks_like_path(source: str) -> bool:
    return source.endswith(CHECKPOINT_SUFFIXES) or any(sep and sep in source for sep in (os.sep, os.altsep))


def load_slopes(
        source: Union[str, os.PathLike],
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        use_ema: bool = False,
        pretrained: bool = False,
) -> List[LayerSlopes]:
    """Slopes per layer of a checkpoint / .safetensors file or of a timm model name (``pretrained`` downloads it).

    ``model_name`` / ``model_kwargs`` override the architecture a file records (needed for a bare .safetensors);
    ``use_ema`` reads the EMA weights of a train.py checkpoint.
    """
    source = str(source)
    if os.path.exists(source) or _looks_like_path(source):
        from ..sources.checkpoints import create_model_from_checkpoint, read_checkpoint
        model = create_model_from_checkpoint(read_checkpoint(source, use_ema=use_ema), model_name, model_kwargs)
    else:
        import timm
        import timm_prelu  # noqa: F401  (registers the PReLU-nets)
        if not timm.is_model(source):
            raise UserError(f'{source!r} is neither a file nor a timm model name: pass a checkpoint '
                            f'(.pth.tar / .safetensors) or a model such as prelu_model_a')
        try:
            model = timm.create_model(source, pretrained=pretrained, **(model_kwargs or {}))
        except (TypeError, ValueError) as e:
            raise UserError(f'cannot build {source} with {model_kwargs or {}}: {e}') from None
        except Exception as e:  # download / hub errors of pretrained=True
            if not pretrained:
                raise
            raise UserError(f'cannot load pretrained weights of {source} ({type(e).__name__}: '
                            f'{str(e).splitlines()[0] if str(e) else ""}): check the name and your network, '
                            f'or drop --pretrained') from None
    rows = layer_slopes(model)
    if not rows:
        raise UserError(f'{source} has no PReLU layers (a ReLU model?): slopes exist only for act=prelu / prelu_shared')
    return rows


def format_slopes(rows: List[LayerSlopes]) -> str:
    """A Markdown table, one row per PReLU, by depth."""
    lines = ['| depth | layer | channels | mean | min | max |', '|---|---|---|---|---|---|']
    lines += [f'| {r.depth} | {r.name} | {r.channels} | {r.mean:.4f} | {r.min:.4f} | {r.max:.4f} |' for r in rows]
    return '\n'.join(lines)


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
