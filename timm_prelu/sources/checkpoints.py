"""Safe loading of the checkpoints timm's train.py writes (and of .safetensors weights) into timm models.

train.py saves ``checkpoint-N.pth.tar`` / ``model_best.pth.tar`` / ``last.pth.tar``: a dict with ``state_dict``
(``state_dict_ema`` with ``--model-ema``), ``arch``, ``epoch``, ``metric``, ``optimizer`` and its ``argparse.Namespace``
of command line ``args``. They are read with ``torch.load(weights_only=True)`` allowing that one class and nothing
else, so a checkpoint cannot run code on load. The recorded args are data: only the architecture (``model``),
``model_kwargs``, ``num_classes`` and ``in_chans`` are taken to rebuild the model (checked by
:mod:`timm_prelu.sources.build`); nothing they name (class maps, data folders, checkpoint paths) is ever read.
"""
import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError
from ..formatting import first_line

__all__ = ['TrainCheckpoint', 'read_checkpoint', 'create_model_from_checkpoint', 'CHECKPOINT_SUFFIXES']

CHECKPOINT_SUFFIXES = ('.pth.tar', '.pth', '.pt', '.safetensors')

# The only non-tensor class train.py pickles into its checkpoints.
ALLOWED_GLOBALS = [argparse.Namespace]
CHECKPOINT_HINT = ('a checkpoint written by timm train.py (e.g. OUTPUT/EXPERIMENT/model_best.pth.tar) '
                   'or a .safetensors file')


@dataclass
class TrainCheckpoint:
    """Weights read from a checkpoint, with what the checkpoint records about how they were made."""
    path: Path
    state_dict: Dict[str, torch.Tensor]
    model_name: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # architecture kwargs incl. num_classes, in_chans
    args: Dict[str, Any] = field(default_factory=dict)  # train.py's command line arguments, when recorded
    epoch: Optional[int] = None
    metric: Optional[float] = None
    ema: bool = False


def read_checkpoint(path: Union[str, Path], use_ema: bool = False) -> TrainCheckpoint:
    """Read a train.py checkpoint or a .safetensors file safely; ``use_ema`` picks train.py's EMA weights."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f'checkpoint not found: {path}: give {CHECKPOINT_HINT}', param='source')
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.name.endswith(CHECKPOINT_SUFFIXES))
        raise CheckpointError(f'{path} is a folder, not a checkpoint file: give one of the files in it '
                              f'({", ".join(found[:8]) or "none found"})', param='source')
    if path.suffix == '.safetensors':
        return _read_safetensors(path, use_ema)
    return _read_torch(path, use_ema)


def _read_safetensors(path: Path, use_ema: bool) -> TrainCheckpoint:
    import safetensors.torch
    if use_ema:
        raise ConfigError(f'{path} holds one set of weights; EMA weights (use_ema) exist only in train.py '
                          f'checkpoints, which keep them beside the model weights', param='use_ema')
    try:
        state_dict = safetensors.torch.load_file(str(path), device='cpu')
    except Exception as e:  # safetensors raises its own SafetensorError for bad headers / short files
        raise CheckpointError(f'{path} is not a readable .safetensors file ({first_line(e)}): it is corrupt or '
                              f'truncated; copy or export it again', param='source') from e
    return TrainCheckpoint(path=path, state_dict=state_dict)


def _read_torch(path: Path, use_ema: bool) -> TrainCheckpoint:
    unreadable = (f'{path} is not a readable checkpoint ({{}}): it is corrupt or truncated; use another checkpoint '
                  f'of the run (e.g. last.pth.tar) or copy it again')
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            raw = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        match = re.search(r'GLOBAL ([\w.]+)', str(e))
        if 'Weights only load failed' in str(e) and match:
            raise CheckpointError(
                f'{path} contains a pickled {match.group(1)}, which is not allowed: only tensors, plain containers '
                f'and argparse.Namespace (train.py args) are unpickled, because loading other objects can run '
                f'arbitrary code. If you trust the file, re-save just its weights (torch.save({{"state_dict": '
                f'model.state_dict()}}, path) or safetensors) and use that', param='source') from e
        raise CheckpointError(unreadable.format(first_line(e)), param='source') from e
    except Exception as e:  # the weights-only unpickler raises anything (KeyError, EOFError, ...) on garbage
        raise CheckpointError(unreadable.format(first_line(e)), param='source') from e
    return _from_train_dict(path, raw, use_ema)


def _state_dict(path: Path, value: Any, where: str) -> Dict[str, torch.Tensor]:
    if not isinstance(value, Mapping):
        raise CheckpointError(f'{path}: {where} is a {type(value).__name__}, not a mapping of tensor names to '
                              f'tensors: the file is not a timm checkpoint', param='source')
    bad = [str(k)[:60] for k, v in value.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'{path}: {where} holds {len(bad)} entries that are not named tensors (e.g. '
                              f'{bad[0]!r}): the file is not a timm checkpoint', param='source')
    if not value:
        raise CheckpointError(f'{path}: {where} is empty: the file holds no weights', param='source')
    return dict(value)


def _recorded_int(path: Path, args: Mapping[str, Any], key: str) -> Optional[int]:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000_000:
        raise CheckpointError(f'{path} records {key}={repr(value)[:40]}, which is not a count: the recorded '
                              f'arguments are malformed; give the model name and model kwargs explicitly',
                              param='source')
    return value


def _from_train_dict(path: Path, raw: Any, use_ema: bool) -> TrainCheckpoint:
    from timm.models import clean_state_dict
    if not isinstance(raw, Mapping):
        raise CheckpointError(f'{path} holds a {type(raw).__name__}, not a checkpoint dict: give {CHECKPOINT_HINT}',
                              param='source')
    if use_ema:
        if 'state_dict_ema' not in raw:
            raise ConfigError(f'{path} has no EMA weights (train.py saves them only when run with --model-ema): '
                              f'read the model weights instead (use_ema off)', param='use_ema')
        state_dict = _state_dict(path, raw['state_dict_ema'], '"state_dict_ema"')
    elif 'state_dict' in raw:
        state_dict = _state_dict(path, raw['state_dict'], '"state_dict"')
    elif raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state_dict = _state_dict(path, raw, 'the file')  # a bare state dict
    else:
        raise CheckpointError(f'{path} has no weights under "state_dict" (keys: '
                              f'{", ".join(str(k)[:40] for k in list(raw)[:8])}): give {CHECKPOINT_HINT}',
                              param='source')
    args = raw.get('args')
    if args is not None and not isinstance(args, (argparse.Namespace, Mapping)):
        raise CheckpointError(f'{path} records its arguments as a {type(args).__name__}, not train.py\'s '
                              f'namespace: the file is malformed', param='source')
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    args = {k: v for k, v in args.items() if isinstance(k, str)}
    model_kwargs = args.get('model_kwargs')
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise CheckpointError(f'{path} records model_kwargs as a {type(model_kwargs).__name__}, not a dict of model '
                              f'arguments: the recorded arguments are malformed; give the model kwargs explicitly',
                              param='source')
    model_kwargs = dict(model_kwargs or {})
    for key in ('num_classes', 'in_chans'):
        value = _recorded_int(path, args, key)
        if value is not None:
            model_kwargs[key] = value
    name = args.get('model') or raw.get('arch')
    if name is not None and not isinstance(name, str):
        raise CheckpointError(f'{path} records its architecture as a {type(name).__name__}, not a model name',
                              param='source')
    metric, epoch = raw.get('metric'), raw.get('epoch')
    return TrainCheckpoint(
        path=path,
        state_dict=clean_state_dict(state_dict),  # strips DDP 'module.' / torch.compile '_orig_mod.'
        model_name=name,
        model_kwargs=model_kwargs,
        args=args,
        epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        metric=float(metric) if isinstance(metric, (int, float)) and not isinstance(metric, bool) else None,
        ema=use_ema,
    )


def create_model_from_checkpoint(
        checkpoint: TrainCheckpoint,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        **create_kwargs: Any,
) -> nn.Module:
    """The checkpoint's model with its weights, in eval mode (see :func:`timm_prelu.sources.resolve_model`)."""
    from .resolve import model_from_checkpoint
    return model_from_checkpoint(checkpoint, model_name=model_name, model_kwargs=model_kwargs, **create_kwargs).model
