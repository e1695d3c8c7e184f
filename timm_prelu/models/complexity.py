"""Model complexity as the paper counts it: multiply-adds of convs and fc layers (torch's FlopCounterMode)."""
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..formatting import markdown_table

__all__ = ['PAPER_MACS', 'count_macs', 'count_params', 'count_depth', 'complexity_table', 'format_markdown_table']

# Paper, Table 3: multiply-adds at 224 x 224.
PAPER_MACS: Dict[str, float] = {'prelu_model_a': 1.90e10, 'prelu_model_b': 2.32e10, 'prelu_model_c': 5.30e10}


def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1) -> float:
    """Multiply-adds of one forward pass per image (FlopCounterMode counts 2 flops per multiply-add).

    Works on the meta device too: counting needs shapes only, so a full-size model costs neither memory nor time.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(batch_size, *input_size, device=param.device, dtype=param.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2 / batch_size


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_depth(model: nn.Module) -> int:
    """Weight layers (conv + fc), the paper's depth."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def complexity_table(model_names: Sequence[str] = tuple(PAPER_MACS), img_size: int = 224) -> List[Dict]:
    """One row per model: depth, parameters, GMACs at ``img_size``, the paper's figure and the ratio."""
    import timm
    rows = []
    for name in model_names:
        model = timm.create_model(name, device='meta')
        macs = count_macs(model, (3, img_size, img_size))
        paper = PAPER_MACS.get(name) if img_size == 224 else None
        rows.append({
            'model': name,
            'depth': count_depth(model),
            'params (M)': round(count_params(model) / 1e6, 1),
            f'GMACs @{img_size}': round(macs / 1e9, 2),
            'paper GMACs': round(paper / 1e9, 2) if paper else None,
            'ratio': round(macs / paper, 4) if paper else None,
        })
    return rows


def format_markdown_table(rows: List[Dict]) -> str:
    """A list of same-keyed dicts as a Markdown table."""
    keys = list(rows[0])
    return markdown_table(keys, [['' if row[k] is None else str(row[k]) for k in keys] for row in rows])
