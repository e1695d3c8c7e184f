"""Argument parsing shared by several subcommands (not a subcommand: the name starts with '_')."""
import ast
from typing import Any, Dict, List, Optional, Sequence

from ..errors import UserError

__all__ = ['parse_model_kwargs', 'check_output']


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


def check_output(path: str, flag: str, *, kind: str = 'dir', overwrite: bool = False,
                 inputs: Sequence[Optional[str]] = (), split: bool = False) -> None:
    """:func:`timm_prelu.outputs.check_destination` (``kind`` 'dir' or 'file'; 'onnx': every file an export
    writes, with ``split``), worded for the command line: the error names ``flag`` and the ``--overwrite`` option.
    Commands call it right after parsing, before any model or image is read."""
    from ..errors import OutputError
    from ..outputs import OVERWRITE_HINT, check_destination
    inputs = [i for i in inputs if i]
    try:
        if kind == 'onnx':
            from ..onnx_model.export import check_export_destination
            check_export_destination(path, split=split, overwrite=overwrite, inputs=inputs)
        else:
            check_destination(path, kind=kind, overwrite=overwrite, inputs=inputs)
    except OutputError as e:
        raise OutputError(f'{flag} {e}'.replace(OVERWRITE_HINT, 'pass --overwrite'), param=e.param) from e
