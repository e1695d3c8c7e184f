"""Argument parsing shared by several subcommands (not a subcommand: the name starts with '_')."""
import ast
from typing import Any, Dict, List, Optional

from ..errors import UserError

__all__ = ['parse_model_kwargs']


def parse_model_kwargs(items: Optional[List[str]]) -> Dict[str, Any]:
    """``--model-kwargs`` K=V pairs as train.py reads them: Python literals, else strings."""
    kwargs: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise UserError(f'--model-kwargs expects key=value pairs, got {item!r} (e.g. width_mult=0.125 fc_dim=64)')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs
