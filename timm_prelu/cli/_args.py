"""Argument parsing shared by several subcommands (not a subcommand: the name starts with '_')."""
import argparse
import ast
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ConfigError

__all__ = ['parse_model_kwargs', 'add_model_source_args', 'resolve_from_args', 'PARAM_FLAGS', 'flag_for',
           'describe_labels', 'check_output']

# The flag a library error's ``param`` stands for on the command line.
PARAM_FLAGS = {
    'model_kwargs': '--model-kwargs', 'num_classes': '--num-classes', 'labels': '--labels', 'use_ema': '--use-ema',
    'model_name': '--model', 'pretrained': '--pretrained', 'repo_id': '--repo-id', 'out': '--out',
    'device': '--device', 'sections': '--sections', 'threads': '--threads', 'views': '--views', 'scales': '--scales',
    'steps': '--steps', 'example_input': '--img-size', 'opset': '--opset', 'protocol': '--protocol',
    'providers': '--providers', 'flip': '--no-flip', 'crop_size': '--crop-size',
    'calibrate': '--calibrate', 'calibrate_count': '--calibrate-count', 'precision': '--precision',
    'demo_epochs': '--epochs', 'data': '--data', 'seeds': '--seeds',
}


def flag_for(param: Optional[str]) -> Optional[str]:
    """The command-line flag for a library parameter name, if it has one."""
    return PARAM_FLAGS.get(param) if param else None


def parse_model_kwargs(items: Optional[List[str]]) -> Dict[str, Any]:
    """``--model-kwargs`` K=V pairs as train.py reads them: Python literals, else strings."""
    kwargs: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'--model-kwargs expects key=value pairs, got {item!r} (e.g. width_mult=0.125 '
                              f'fc_dim=64)', param='model_kwargs')
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
        # the message names the flag itself (one destination parameter serves several flags)
        raise OutputError(f'{flag} {e}'.replace(OVERWRITE_HINT, 'pass --overwrite')) from e


def add_model_source_args(p: argparse.ArgumentParser, *, pretrained: bool = True, labels: bool = True,
                          ema: bool = True) -> None:
    """The flags that say how to build a model from a name, hub id, hub folder or checkpoint (one set for all)."""
    p.add_argument('--model-kwargs', nargs='*', default=None, metavar='K=V',
                   help='model arguments, e.g. width_mult=0.125 fc_dim=64 (override what a checkpoint records)')
    p.add_argument('--num-classes', type=int, default=None, metavar='N',
                   help='classifier size (default: the recorded one, else read from the weights)')
    if labels:
        p.add_argument('--labels', default=None, metavar='FILE|FOLDER',
                       help='class names: a text file (one per line, in class-index order) or an ImageFolder whose '
                            'class folders name the classes (default: the names the model records, if any)')
    if ema:
        p.add_argument('--use-ema', '--ema', dest='use_ema', action='store_true',
                       help="the EMA weights of a train.py checkpoint (train.py --model-ema)")
    if pretrained:
        p.add_argument('--pretrained', action='store_true',
                       help="for a model name: load its pretrained tag's published weights")


def resolve_from_args(args: argparse.Namespace, source: Any, model_name: Optional[str] = None, **kwargs: Any):
    """``timm_prelu.sources.resolve_model`` with the flags of :func:`add_model_source_args`."""
    from ..sources import resolve_model
    return resolve_model(
        source, model_name=model_name, model_kwargs=parse_model_kwargs(getattr(args, 'model_kwargs', None)),
        num_classes=getattr(args, 'num_classes', None), labels=getattr(args, 'labels', None),
        pretrained=getattr(args, 'pretrained', False), use_ema=getattr(args, 'use_ema', False), **kwargs)


def describe_labels(names: Optional[List[str]], shown: int = 5) -> str:
    """'10 label names (zero, one, ...)' or 'no label names'."""
    if not names:
        return 'no label names'
    return f'{len(names)} label names ({", ".join(names[:shown])}{", ..." if len(names) > shown else ""})'
