"""Safe loading of the checkpoints timm's train.py writes (and of .safetensors weights) into timm models.

train.py saves ``checkpoint-N.pth.tar`` / ``model_best.pth.tar`` / ``last.pth.tar``: a dict with ``state_dict``
(``state_dict_ema`` with ``--model-ema``), ``arch``, ``epoch``, ``metric``, ``optimizer`` and its ``argparse.Namespace``
of command line ``args``. They are read with ``torch.load(weights_only=True)`` allowing that one class and nothing
else, so a checkpoint cannot run code on load. The args tell how to rebuild the model (``--model``,
``--model-kwargs``, ``--num-classes``, ``--in-chans``); a mismatch is reported key by key with the fix.
"""
import argparse
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..errors import UserError

__all__ = ['TrainCheckpoint', 'read_checkpoint', 'create_model_from_checkpoint', 'check_state_dict_fits',
           'label_names_from_args']

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
        raise UserError(f'checkpoint not found: {path}: pass {CHECKPOINT_HINT}')
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.name.endswith(('.pth.tar', '.pth', '.safetensors')))
        raise UserError(f'{path} is a folder, not a checkpoint file: pass one of the files in it '
                        f'({", ".join(found) or "none found"})')
    if path.suffix == '.safetensors':
        return _read_safetensors(path, use_ema)
    return _read_torch(path, use_ema)


def _read_safetensors(path: Path, use_ema: bool) -> TrainCheckpoint:
    import safetensors.torch
    if use_ema:
        raise UserError(f'{path} holds one set of weights; --ema applies only to train.py checkpoints '
                        f'(which keep EMA weights beside the model weights): drop --ema')
    try:
        state_dict = safetensors.torch.load_file(str(path), device='cpu')
    except Exception as e:  # safetensors raises its own SafetensorError for bad headers / short files
        raise UserError(f'{path} is not a readable .safetensors file ({e}): it is corrupt or truncated; '
                        f'copy or export it again') from None
    checkpoint = TrainCheckpoint(path=path, state_dict=state_dict)
    config = path.parent / 'config.json'  # a folder written by timm's save_for_hf describes its weights
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
        except (OSError, ValueError):
            cfg = {}
        if isinstance(cfg, dict) and cfg.get('architecture'):
            checkpoint.model_name = cfg['architecture']
            checkpoint.model_kwargs = dict(cfg.get('model_args') or {})
            if 'num_classes' in cfg:
                checkpoint.model_kwargs.setdefault('num_classes', cfg['num_classes'])
    return checkpoint


def _read_torch(path: Path, use_ema: bool) -> TrainCheckpoint:
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            raw = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        match = re.search(r'GLOBAL ([\w.]+)', str(e))
        if 'Weights only load failed' in str(e) and match:
            raise UserError(
                f'{path} contains a pickled {match.group(1)}, which is not allowed: only tensors, plain containers '
                f'and argparse.Namespace (train.py args) are unpickled, because loading other objects can run '
                f'arbitrary code. If you trust the file, re-save just its weights (torch.save({{"state_dict": '
                f'model.state_dict()}}, path) or safetensors) and pass that') from None
        raise UserError(f'{path} is not a readable checkpoint ({_first_line(e)}): it is corrupt or truncated; '
                        f'use another checkpoint of the run (e.g. last.pth.tar) or copy it again') from None
    except Exception as e:  # the weights-only unpickler raises anything (KeyError, EOFError, ...) on garbage
        raise UserError(f'{path} is not a readable checkpoint ({_first_line(e)}): it is corrupt or truncated; '
                        f'use another checkpoint of the run (e.g. last.pth.tar) or copy it again') from None
    return _from_train_dict(path, raw, use_ema)


def _first_line(e: BaseException) -> str:
    """The exception's first sentence: enough to tell what broke without torch's advice paragraphs."""
    text = str(e).strip().splitlines()
    first = text[0].split('. ')[0].rstrip('.') if text else ''
    return f'{type(e).__name__}: {first}' if first else type(e).__name__


def _from_train_dict(path: Path, raw: Any, use_ema: bool) -> TrainCheckpoint:
    from timm.models import clean_state_dict
    if not isinstance(raw, Mapping):
        raise UserError(f'{path} holds a {type(raw).__name__}, not a checkpoint dict: pass {CHECKPOINT_HINT}')
    if use_ema:
        if 'state_dict_ema' not in raw:
            raise UserError(f'{path} has no EMA weights (train.py saves them only when run with --model-ema): '
                            f'drop --ema to publish the model weights')
        state_dict = raw['state_dict_ema']
    elif 'state_dict' in raw:
        state_dict = raw['state_dict']
    elif raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state_dict = raw  # a bare state dict
    else:
        raise UserError(f'{path} has no weights under "state_dict" (keys: {", ".join(map(str, list(raw)[:8]))}): '
                        f'pass {CHECKPOINT_HINT}')
    args = raw.get('args')
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, Mapping) else {}
    model_kwargs = dict(args.get('model_kwargs') or {})
    for key in ('num_classes', 'in_chans'):
        if args.get(key) is not None:
            model_kwargs[key] = args[key]
    metric = raw.get('metric')
    return TrainCheckpoint(
        path=path,
        state_dict=clean_state_dict(dict(state_dict)),  # strips DDP 'module.' / torch.compile '_orig_mod.'
        model_name=args.get('model') or raw.get('arch'),
        model_kwargs=model_kwargs,
        args=args,
        epoch=raw.get('epoch'),
        metric=float(metric) if isinstance(metric, (int, float)) else None,
        ema=use_ema,
    )


def create_model_from_checkpoint(
        checkpoint: TrainCheckpoint,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        **create_kwargs: Any,
) -> nn.Module:
    """Build the checkpoint's timm model (overridable) and load its weights strictly, in eval mode.

    ``model_kwargs`` override what the checkpoint recorded (e.g. ``num_classes``); ``create_kwargs`` go to
    ``timm.create_model`` (e.g. ``pretrained_cfg_overlay``). Without a recorded ``num_classes`` it is read from the
    classifier's weight.
    """
    import timm
    name = model_name or checkpoint.model_name
    if not name:
        raise UserError(f'{checkpoint.path} does not record its architecture: pass --model NAME '
                        f'(and --model-kwargs as used for training)')
    if not timm.is_model(name):
        raise UserError(f'unknown model {name!r}: pass --model with a timm model name, e.g. prelu_model_a '
                        f'(see `timm-prelu models`)')
    kwargs = {**checkpoint.model_kwargs, **(model_kwargs or {})}
    if 'num_classes' not in kwargs:
        num_classes = _classifier_outputs(name, checkpoint.state_dict)
        if num_classes is not None:
            kwargs['num_classes'] = num_classes
    try:
        model = timm.create_model(name, pretrained=False, **kwargs, **create_kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f'cannot build {name} with {_format_kwargs(kwargs)}: {e}; fix --model-kwargs') from None
    try:
        check_state_dict_fits(model, checkpoint.state_dict, name, kwargs, source=str(checkpoint.path))
    except UserError as e:
        overridden = model_name not in (None, checkpoint.model_name) or any(
            checkpoint.model_kwargs.get(k) != v for k, v in (model_kwargs or {}).items())
        if checkpoint.model_name and overridden:  # the user's override is the likely culprit
            raise UserError(f'{e} (train.py recorded --model {checkpoint.model_name} with '
                            f'{_format_kwargs(checkpoint.model_kwargs)})') from None
        raise
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model.eval()


def _classifier_outputs(name: str, state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    classifier = getattr(cfg, 'classifier', None) if cfg is not None else None
    weight = state_dict.get(f'{classifier}.weight') if isinstance(classifier, str) else None
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else None


def _format_kwargs(kwargs: Mapping[str, Any]) -> str:
    return ', '.join(f'{k}={v!r}' for k, v in kwargs.items()) or 'default arguments'


def check_state_dict_fits(
        model: nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        model_name: str,
        model_kwargs: Mapping[str, Any],
        source: str = 'the checkpoint',
) -> None:
    """Raise a UserError naming every mismatching key and shape, and the flags that fix it."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [(k, tuple(state_dict[k].shape), tuple(expected[k].shape))
              for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return
    problems: List[str] = []
    if shapes:
        problems.append('shape mismatch: ' + '; '.join(f'{k} is {s} in the checkpoint, {m} in the model'
                                                       for k, s, m in shapes[:6])
                        + (f' (+{len(shapes) - 6} more)' if len(shapes) > 6 else ''))
    if missing:
        problems.append(f'missing from the checkpoint: {", ".join(missing[:6])}'
                        + (f' (+{len(missing) - 6} more)' if len(missing) > 6 else ''))
    if unexpected:
        problems.append(f'not in the model: {", ".join(unexpected[:6])}'
                        + (f' (+{len(unexpected) - 6} more)' if len(unexpected) > 6 else ''))
    classifier = getattr(model, 'pretrained_cfg', {}).get('classifier') or 'head'
    only_head = not missing and not unexpected and all(k.startswith(f'{classifier}.') for k, _, _ in shapes)
    if only_head:
        classes = shapes[0][1][0]
        fix = (f'the checkpoint has {classes} classes, the model {model_kwargs.get("num_classes")}: '
               f'pass --model-kwargs num_classes={classes} (or leave num_classes out to use the recorded one)')
    else:
        fix = ('the checkpoint is of another architecture or width: pass the --model and --model-kwargs it was '
               'trained with (train.py\'s --model / --model-kwargs / --num-classes)')
    raise UserError(f'{source} does not fit {model_name}({_format_kwargs(model_kwargs)}): '
                    f'{" | ".join(problems)}. Fix: {fix}')


def label_names_from_args(args: Mapping[str, Any]) -> Optional[List[str]]:
    """Class names in index order from train.py args: its --class-map file, else the ImageFolder class folders
    (naturally sorted, as timm's ImageFolder reader indexes them); None when they cannot be found here."""
    from timm.utils import natural_key
    class_map = args.get('class_map')
    if class_map and Path(class_map).is_file():
        # timm's load_class_map: one class name per line, the line number is its index
        return [line.strip() for line in Path(class_map).read_text().splitlines() if line.strip()]
    data_dir = args.get('data_dir') or args.get('data')
    if args.get('dataset') or not data_dir:
        return None  # torch/, hfds/, wds/ datasets: class names live in the dataset, not on disk here
    root = Path(data_dir)
    split = root / (args.get('train_split') or 'train')
    root = split if split.is_dir() else root
    if not root.is_dir():
        return None
    classes = sorted((d.name for d in root.iterdir() if d.is_dir()), key=natural_key)
    return classes or None
