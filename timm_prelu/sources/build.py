"""Build a timm model for a set of weights, checked before any memory is allocated.

Model arguments often come from a file someone else wrote (train.py's recorded args, a hub ``config.json``), so
they are data: an architecture from timm's registry and keyword arguments of plain values, nothing that makes timm
read a file. The model is first built on the ``meta`` device, where tensors have shapes but no storage; its tensor
names and shapes are compared with the weights', and only a model that fits them is built for real. A 3 MB file
that asks for a model of a hundred gigabytes is refused in milliseconds.
"""
import inspect
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..formatting import first_line, format_kwargs
from ..errors import CheckpointError, ConfigError, ModelSourceError, PretrainedMismatchError

__all__ = ['check_model_name', 'check_model_kwargs', 'build_for_weights', 'check_state_dict_fits', 'format_kwargs',
           'first_line']

MAX_VALUE_ITEMS = 64
MAX_STR_CHARS = 256


def _reserved_keys() -> frozenset:
    """Keyword arguments of timm's builders (pretrained files, checkpoint paths, devices), never model arguments."""
    import timm
    from timm.models import build_model_with_cfg
    keys = set(inspect.signature(timm.create_model).parameters)
    keys |= set(inspect.signature(build_model_with_cfg).parameters)
    keys |= {'features_only', 'out_indices', 'feature_cls', 'device', 'dtype', 'class_map', 'label_names',
             'hf_hub_id', 'url', 'file', 'state_dict'}
    return frozenset(keys - {'kwargs', 'model_name'})


def check_model_name(name: Any, *, what: str, param: str) -> str:
    """``name`` if it is a registered timm architecture (a pretrained tag is cut off), else ModelSourceError."""
    import timm
    import timm_prelu  # noqa: F401  (registers the PReLU-nets)
    if not isinstance(name, str) or not name or len(name) > MAX_STR_CHARS:
        raise ModelSourceError(f'{what} names no architecture ({type(name).__name__} {str(name)[:40]!r}): '
                               f'give a timm model name such as prelu_model_a', param=param)
    arch = name.split('.', 1)[0]
    if not timm.is_model(arch):
        raise ModelSourceError(f'unknown model {name!r} ({what}): it is not registered in timm; give a '
                               f'registered name such as prelu_model_a (timm.list_models())', param=param)
    return arch


def _check_plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return not isinstance(value, str) or len(value) <= MAX_STR_CHARS
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)) and depth < 2:
        return len(value) <= MAX_VALUE_ITEMS and all(_check_plain(v, depth + 1) for v in value)
    if isinstance(value, dict) and depth < 2:
        return len(value) <= MAX_VALUE_ITEMS and all(
            isinstance(k, str) and _check_plain(v, depth + 1) for k, v in value.items())
    return False


def check_model_kwargs(kwargs: Any, *, what: str, param: str, error: type = ConfigError) -> Dict[str, Any]:
    """``kwargs`` as a dict if it holds model arguments of plain values, else ``error`` naming the bad key."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise error(f'{what} are a {type(kwargs).__name__}, not a dict of model arguments', param=param)
    reserved = _reserved_keys()
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise error(f'{what} hold the key {str(key)[:40]!r}, which is not an argument name', param=param)
        if key in reserved:
            raise error(f'{what} hold {key}={str(value)[:60]!r}: {key} is not a model argument (it would make '
                              f'timm load or place weights); only architecture arguments are accepted', param=param)
        if not _check_plain(value):
            raise error(f'{what} hold {key} = a {type(value).__name__} ({str(value)[:60]}): model arguments '
                              f'must be plain numbers, strings, booleans or short lists of them', param=param)
    return dict(kwargs)


def _num_classes_from(name: str, shapes: Mapping[str, Tuple[int, ...]]) -> Optional[int]:
    """The classifier's outputs in the weights (its name from timm's pretrained_cfg), when it can be told."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    classifier = getattr(cfg, 'classifier', None) if cfg is not None else None
    shape = shapes.get(f'{classifier}.weight') if isinstance(classifier, str) else None
    return int(shape[0]) if shape else None


def build_for_weights(
        name: str,
        kwargs: Mapping[str, Any],
        shapes: Mapping[str, Tuple[int, ...]],
        *,
        source: str,
        param: str,
        recorded: Optional[Tuple[str, Mapping[str, Any]]] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """The model ``name(**kwargs)`` in eval mode, built on CPU only once its meta twin fits ``shapes``.

    Without ``num_classes`` in ``kwargs`` it is read from the classifier's weight. ``recorded`` is the architecture
    and kwargs the weights' own file recorded, quoted in the error when the caller's overrides make them not fit.
    Weights are not loaded here (see :func:`torch.nn.Module.load_state_dict`).
    """
    import timm
    kwargs = dict(kwargs)
    if 'num_classes' not in kwargs:
        num_classes = _num_classes_from(name, shapes)
        if num_classes is not None:
            kwargs['num_classes'] = num_classes
    extra = {'pretrained_cfg_overlay': pretrained_cfg_overlay} if pretrained_cfg_overlay else {}
    try:
        with torch.device('meta'):
            meta = timm.create_model(name, pretrained=False, **kwargs, **extra)
    except Exception as e:  # model constructors raise anything (TypeError, ValueError, AssertionError, ...)
        error = CheckpointError if param == 'source' else ConfigError  # the weights' own record, or the caller's
        raise error(f'cannot build {name}({format_kwargs(kwargs)}): {first_line(e)}', param=param) from e
    try:
        check_state_dict_fits(meta, shapes, name, kwargs, source=source, param=param)
    except PretrainedMismatchError as e:
        if recorded and (recorded[0] != name or any(recorded[1].get(k) != v for k, v in kwargs.items()
                                                    if k in recorded[1])):
            raise PretrainedMismatchError(f'{e} (the weights record {recorded[0]} with '
                                          f'{format_kwargs(recorded[1])})', param=param) from e
        raise
    del meta
    model = timm.create_model(name, pretrained=False, **kwargs, **extra)
    return model.eval()


def check_state_dict_fits(
        model: nn.Module,
        shapes: Mapping[str, Any],
        model_name: str,
        model_kwargs: Mapping[str, Any],
        source: str = 'the checkpoint',
        param: str = 'source',
) -> None:
    """Raise PretrainedMismatchError naming mismatching tensors and the likely fix; ``shapes`` maps names to
    shapes (or to tensors)."""
    shapes = {k: tuple(v.shape) if hasattr(v, 'shape') else tuple(v) for k, v in shapes.items()}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [(k, shapes[k], m) for k, m in expected.items() if k in shapes and shapes[k] != m]
    if not (missing or unexpected or wrong):
        return

    def some(keys: List[str]) -> str:
        return ', '.join(keys[:6]) + (f' (+{len(keys) - 6} more)' if len(keys) > 6 else '')

    problems: List[str] = []
    if wrong:
        problems.append('shape mismatch: ' + '; '.join(f'{k} is {s} in the weights, {m} in the model'
                                                       for k, s, m in wrong[:6])
                        + (f' (+{len(wrong) - 6} more)' if len(wrong) > 6 else ''))
    if missing:
        problems.append(f'missing from the weights: {some(missing)}')
    if unexpected:
        problems.append(f'not in the model: {some(unexpected)}')
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or 'head'
    if not missing and not unexpected and all(k.startswith(f'{classifier}.') for k, _, _ in wrong):
        classes = wrong[0][1][0]
        fix = (f'the weights have {classes} classes, the model {model_kwargs.get("num_classes")}: build it with '
               f'num_classes={classes}, or leave num_classes out to use the recorded one')
    else:
        fix = 'the weights are of another architecture or width: give the model name and model kwargs they were ' \
              'trained with'
    raise PretrainedMismatchError(f'{source} does not fit {model_name}({format_kwargs(model_kwargs)}): '
                                  f'{" | ".join(problems)}. Fix: {fix}', param=param)
