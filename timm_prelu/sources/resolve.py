"""The one way in for models: any model source becomes a model, its label names, pretrained_cfg and provenance.

Sources (``resolve_model(source, ...)``):

- a registered timm name (``prelu_model_a``; with ``pretrained=True`` a pretrained tag's published weights),
- ``hf-hub:ORG/NAME[@REVISION]``: downloaded through ``huggingface_hub``, the weights verified against the
  checksum the Hub gives for them,
- ``local-dir:PATH`` or a plain folder in timm's hub layout (``config.json`` + ``model.safetensors``),
- a timm ``train.py`` checkpoint (``.pth``, ``.pth.tar``, ``.safetensors``; its EMA weights with ``use_ema``),
- an exported ``.onnx`` file, for callers that run one (``allow_onnx=True``).

Whatever a file records (train.py's args, ``config.json``) is data: it may choose a registered architecture and
plain model arguments, checked against the weights' tensor shapes on the meta device before anything is allocated.
Nothing it names is read. Label names come from the source itself (a hub config, ONNX metadata) or from the
caller's ``labels`` (a list, a text file or an ImageFolder).
"""
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError, HubFileNotFoundError, ModelSourceError
from ..formatting import first_line, format_kwargs
from .build import build_for_weights, check_model_kwargs, check_model_name
from .checkpoints import CHECKPOINT_SUFFIXES, TrainCheckpoint, read_checkpoint
from .hub import CONFIG_NAME, WEIGHTS_NAME, fetch_hub_model, sha256_file, verify_safetensors
from .labels import label_names_problem, read_label_names

__all__ = ['ResolvedModel', 'Provenance', 'resolve_model', 'model_from_checkpoint', 'read_hub_config',
           'is_prelu_net', 'parse_hub_source']

MAX_CONFIG_BYTES = 16 * 1024 * 1024
# pretrained_cfg entries that describe preprocessing and classes; 'file', 'url', 'hf_hub_id' etc. are never taken
DATA_CFG_KEYS = ('input_size', 'test_input_size', 'min_input_size', 'fixed_input_size', 'interpolation', 'mean',
                 'std', 'crop_pct', 'crop_mode', 'test_crop_pct', 'num_classes', 'label_names', 'license', 'tag')
INTERPOLATIONS = ('bilinear', 'bicubic', 'nearest', 'lanczos', 'box', 'hamming', 'random')
LabelSource = Union[str, os.PathLike, Sequence[str], None]


@dataclass
class Provenance:
    """Where a model came from: the source as given, its kind, and the weights' file, hub revision and sha256."""
    source: str
    kind: str  # 'random-init', 'pretrained', 'hf-hub', 'local-dir', 'checkpoint', 'onnx' or 'module'
    repo_id: Optional[str] = None
    revision: Optional[str] = None  # the hub commit the files were read at
    file: Optional[str] = None  # the weights file read (a local path)
    sha256: Optional[str] = None  # of that file
    epoch: Optional[int] = None
    metric: Optional[float] = None
    ema: bool = False

    def metadata(self) -> Dict[str, Any]:
        """What is safe to publish (ONNX metadata, cards): no local paths, only the weights file's name."""
        info = {k: v for k, v in asdict(self).items() if v not in (None, False) and k != 'source'}
        if self.file:
            info['file'] = Path(self.file).name
        return info


@dataclass
class ResolvedModel:
    """A model ready to use (eval mode) with what is known about it."""
    model: Any  # nn.Module, or an OnnxModel for an ONNX source
    label_names: Optional[List[str]]
    pretrained_cfg: Dict[str, Any]
    provenance: Provenance
    model_name: Optional[str] = None  # the timm architecture
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # the kwargs it was built with
    data_config: Dict[str, Any] = field(default_factory=dict)  # preprocessing the weights' file recorded
    checkpoint: Optional[TrainCheckpoint] = None  # for a train.py checkpoint: epoch, metric, recorded args

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, 'num_classes', None) or self.pretrained_cfg.get('num_classes') or 0)

    def source_info(self) -> Dict[str, Any]:
        """Provenance plus the model kwargs, as ONNX metadata records them."""
        return {**self.provenance.metadata(), 'model_kwargs': self.model_kwargs or None}


def is_prelu_net(model: Any) -> bool:
    """Whether ``model`` is one of this package's PReLU-nets (not just any timm model)."""
    from ..models import PReLUNet
    return isinstance(model, PReLUNet)


# --- recorded configuration (data only) ----------------------------------------------------------------------------

def _check_data_value(key: str, value: Any) -> bool:
    def numbers(v, n=None):
        return isinstance(v, (list, tuple)) and (n is None or len(v) == n) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    if key in ('input_size', 'test_input_size', 'min_input_size'):
        return numbers(value, 3) and all(isinstance(x, int) and 0 < x <= 100_000 for x in value)
    if key in ('img_size', 'in_chans'):
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 100_000
    if key in ('mean', 'std'):
        return numbers(value) and 0 < len(value) <= 64 and (key == 'mean' or all(x > 0 for x in value))
    if key in ('crop_pct', 'test_crop_pct'):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    if key == 'interpolation':
        return value in INTERPOLATIONS
    if key in ('crop_mode', 'license', 'tag'):
        return isinstance(value, str) and len(value) <= 100
    if key == 'fixed_input_size':
        return isinstance(value, bool)
    if key == 'num_classes':
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10_000_000
    return True


def _data_config(values: Mapping[str, Any], keys: Sequence[str], where: str) -> Dict[str, Any]:
    out = {}
    for key in keys:
        value = values.get(key)
        if value in (None, '', [], ()):
            continue
        if not _check_data_value(key, value):
            raise ModelSourceError(f'{where} records {key}={str(value)[:60]!r}, which is not a valid {key}: the '
                                   f'recorded configuration is malformed', param='source')
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _check_label_list(names: Any, where: str) -> Optional[List[str]]:
    if names is None:
        return None
    if isinstance(names, Mapping) and all(str(k).isdigit() for k in names):  # timm allows {index: name}
        names = [names[k] for k in sorted(names, key=lambda k: int(k))]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ModelSourceError(f'{where} records label_names that are not a list of class names', param='source')
    problem = label_names_problem(names)
    if problem:
        raise ModelSourceError(f'{where} records label_names that cannot be class names: {problem}', param='source')
    return list(names)


def read_hub_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """A hub folder's ``config.json`` as data: architecture, num_classes, model_args, label_names and the
    preprocessing entries of pretrained_cfg (never a file, url or hub id it names)."""
    path = Path(path)
    if not path.is_file():
        raise HubFileNotFoundError(f'{path.parent} has no {CONFIG_NAME}: a timm model folder holds {CONFIG_NAME} '
                                   f'and {WEIGHTS_NAME} (as timm\'s save_for_hf writes them)', param='source')
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelSourceError(f'{path} is larger than any model config ({MAX_CONFIG_BYTES >> 20} MB)',
                               param='source')
    try:
        raw = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise ModelSourceError(f'{path} is not readable JSON ({type(e).__name__}): the model folder is damaged',
                               param='source') from e
    if not isinstance(raw, dict):
        raise ModelSourceError(f'{path} holds a JSON {type(raw).__name__}, not a model config', param='source')
    where = str(path)
    arch = check_model_name(raw.get('architecture'), what=where, param='source')
    kwargs = check_model_kwargs(raw.get('model_args'), what=f'the model_args of {where}', param='source',
                                error=ModelSourceError)
    if 'num_classes' in raw:
        kwargs.setdefault('num_classes', raw['num_classes'])
    if 'num_classes' in kwargs and not _check_data_value('num_classes', kwargs['num_classes']):
        raise ModelSourceError(f'{where} records num_classes={kwargs["num_classes"]!r}, which is not a count',
                               param='source')
    cfg = raw.get('pretrained_cfg') or {}
    if not isinstance(cfg, dict):
        raise ModelSourceError(f'{where} records a pretrained_cfg that is not a dict', param='source')
    data = _data_config(cfg, [k for k in DATA_CFG_KEYS if k != 'label_names'], where)
    labels = _check_label_list(raw.get('label_names', cfg.get('label_names')), where)
    return {'architecture': arch, 'model_args': kwargs, 'pretrained_cfg': data, 'label_names': labels}


def _train_data_config(args: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """The preprocessing train.py ran with (its --img-size, --mean, ...), as save_for_hf's data_config."""
    return _data_config(args, ('input_size', 'img_size', 'in_chans', 'interpolation', 'mean', 'std', 'crop_pct',
                               'crop_mode'), where)


def _cfg_from_data_config(data: Mapping[str, Any]) -> Dict[str, Any]:
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
           if k in ('input_size', 'mean', 'std', 'interpolation', 'crop_pct', 'crop_mode')}
    if 'input_size' not in cfg and data.get('img_size'):
        cfg['input_size'] = (data.get('in_chans') or 3, data['img_size'], data['img_size'])
    return cfg


# --- labels ----------------------------------------------------------------------------------------------------------

def _labels(labels: LabelSource, own: Optional[List[str]], num_classes: int) -> Optional[List[str]]:
    """The caller's labels (checked against the classes), else the source's own when they fit."""
    if labels is None:
        return own if own is not None and len(own) == num_classes else None
    if isinstance(labels, (str, os.PathLike)):
        names, what = read_label_names(labels), f'{labels}'
    else:
        names, what = [str(n) for n in labels], 'the label list'
        if not all(n.strip() for n in names):
            raise ConfigError('label names must not be empty', param='labels')
    if len(names) != num_classes:
        raise ConfigError(f'{len(names)} label names given ({what}) for a model with {num_classes} classes: give '
                          f'one name per class, in class-index order', param='labels')
    return names


def _finish(model: nn.Module, cfg_update: Mapping[str, Any], labels: LabelSource, own: Optional[List[str]],
            provenance: Provenance, name: Optional[str], kwargs: Mapping[str, Any],
            data_config: Optional[Dict[str, Any]] = None,
            checkpoint: Optional[TrainCheckpoint] = None) -> ResolvedModel:
    model.eval()
    num_classes = int(getattr(model, 'num_classes', 0) or 0)
    cfg = {**(getattr(model, 'pretrained_cfg', None) or {}), **cfg_update}
    cfg['num_classes'] = num_classes
    names = _labels(labels, own, num_classes)
    if labels is not None:  # the caller's names replace descriptions of other classes
        cfg.pop('label_descriptions', None)
    if names is not None:
        cfg['label_names'] = names
    elif cfg.get('label_names') is not None and len(cfg['label_names']) != num_classes:
        cfg.pop('label_names')
    if hasattr(model, 'pretrained_cfg'):
        model.pretrained_cfg = cfg
    return ResolvedModel(model=model, label_names=names or cfg.get('label_names'), pretrained_cfg=cfg,
                         provenance=provenance, model_name=name, model_kwargs=dict(kwargs),
                         data_config=dict(data_config or {}), checkpoint=checkpoint)


# --- each kind of source ---------------------------------------------------------------------------------------------

def _user_kwargs(model_kwargs: Optional[Mapping[str, Any]], num_classes: Optional[int]) -> Dict[str, Any]:
    kwargs = check_model_kwargs(model_kwargs, what='model_kwargs', param='model_kwargs')
    if num_classes is not None:
        if not _check_data_value('num_classes', num_classes):
            raise ConfigError(f'num_classes={num_classes!r} is not a count of classes', param='num_classes')
        kwargs['num_classes'] = num_classes
    return kwargs


def model_from_checkpoint(
        checkpoint: TrainCheckpoint,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        *,
        num_classes: Optional[int] = None,
        labels: LabelSource = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        source: Optional[str] = None,
) -> ResolvedModel:
    """The model of a checkpoint already read: the recorded architecture and kwargs (``model_name`` and
    ``model_kwargs`` override them), checked against the weights on the meta device, then loaded strictly."""
    path = checkpoint.path
    given = model_name or checkpoint.model_name
    if not given:
        raise ModelSourceError(f'{path} does not record its architecture: give the model name (and the model '
                               f'kwargs it was trained with)', param='model_name')
    name = check_model_name(given, what=f'the architecture {"given" if model_name else f"recorded in {path.name}"}',
                            param='model_name' if model_name else 'source')
    recorded = check_model_kwargs(checkpoint.model_kwargs, what=f'the model kwargs recorded in {path.name}',
                                  param='source', error=CheckpointError)
    user = _user_kwargs(model_kwargs, num_classes)
    kwargs = {**recorded, **user}
    overridden = bool(model_name) or bool(user)
    model = build_for_weights(name, kwargs, {k: tuple(v.shape) for k, v in checkpoint.state_dict.items()},
                              source=str(path), param='model_kwargs' if overridden else 'source',
                              recorded=(checkpoint.model_name, recorded) if checkpoint.model_name else None,
                              pretrained_cfg_overlay=pretrained_cfg_overlay)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    data = _train_data_config(checkpoint.args, str(path))
    provenance = Provenance(source=source or str(path), kind='checkpoint', file=str(path), sha256=sha256_file(path),
                            epoch=checkpoint.epoch, metric=checkpoint.metric, ema=checkpoint.ema)
    return _finish(model, _cfg_from_data_config(data), labels, None, provenance, name,
                   {**kwargs, 'num_classes': model.num_classes}, data, checkpoint)


def _safetensors_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    from safetensors import safe_open
    with safe_open(str(path), framework='pt') as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _from_hub_folder(folder: Path, *, source: str, kind: str, model_name: Optional[str],
                     model_kwargs: Optional[Mapping[str, Any]], num_classes: Optional[int], labels: LabelSource,
                     pretrained_cfg_overlay: Optional[Dict[str, Any]], weights: Optional[Path] = None,
                     sha256: Optional[str] = None, repo_id: Optional[str] = None,
                     revision: Optional[str] = None) -> ResolvedModel:
    import safetensors.torch
    config = read_hub_config(folder / CONFIG_NAME)
    weights = weights or folder / WEIGHTS_NAME
    if sha256 is None:  # a local folder: check the file as a download is checked
        if not weights.is_file():
            raise HubFileNotFoundError(f'{folder} has no {WEIGHTS_NAME}: a timm model folder holds {CONFIG_NAME} and '
                                       f'{WEIGHTS_NAME}', param='source')
        problem, sha256 = verify_safetensors(weights)
        if problem:
            raise ModelSourceError(f'cannot load {weights}: {problem}: copy or download the model again',
                                   param='source')
    name = check_model_name(model_name, what='the architecture given', param='model_name') if model_name \
        else config['architecture']
    recorded = config['model_args']
    user = _user_kwargs(model_kwargs, num_classes)
    kwargs = {**recorded, **user}
    model = build_for_weights(name, kwargs, _safetensors_shapes(weights), source=str(weights),
                              param='model_kwargs' if user or model_name else 'source',
                              recorded=(config['architecture'], recorded),
                              pretrained_cfg_overlay=pretrained_cfg_overlay)
    try:
        state_dict = safetensors.torch.load_file(str(weights), device='cpu')
    except Exception as e:  # SafetensorError for data shorter than the header says
        raise ModelSourceError(f'cannot load {weights}: {type(e).__name__}: {e}', param='source') from e
    model.load_state_dict(state_dict, strict=True)
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config['pretrained_cfg'].items()}
    if repo_id:
        cfg['hf_hub_id'] = repo_id
    provenance = Provenance(source=source, kind=kind, repo_id=repo_id, revision=revision, file=str(weights),
                            sha256=sha256)
    return _finish(model, cfg, labels, config['label_names'], provenance, name,
                   {**kwargs, 'num_classes': model.num_classes}, config['pretrained_cfg'])


def parse_hub_source(spec: str) -> Tuple[str, Optional[str]]:
    """'ORG/NAME[@REVISION]' -> (repo id, revision or None); ModelSourceError if it is not one."""
    repo_id, _, revision = spec.partition('@')
    if not re.fullmatch(r'[\w.-]+/[\w.-]+', repo_id) or '--' in repo_id or '..' in repo_id:
        raise ModelSourceError(f'{spec!r} is not a Hub repo id: use ORG/NAME[@REVISION] (letters, digits, "-", "_", '
                               f'"."), e.g. timm-prelu/prelu_model_a.in1k', param='source')
    return repo_id, revision or None


def _from_onnx(path: Path, source: str, labels: LabelSource, onnx_options: Optional[Dict[str, Any]]) -> ResolvedModel:
    from ..onnx_model.runtime import OnnxModel
    model = OnnxModel(path, **(onnx_options or {}))
    cfg = dict(model.pretrained_cfg)
    num_classes = int(model.info.get('num_classes') or cfg.get('num_classes') or 0)
    own = _check_label_list(cfg.get('label_names'), str(path)) if cfg.get('label_names') is not None else None
    names = _labels(labels, own, num_classes)
    if names is not None:
        cfg['label_names'] = names
        model.pretrained_cfg = cfg
    provenance = Provenance(source=source, kind='onnx', file=str(path), sha256=sha256_file(path))
    return ResolvedModel(model=model, label_names=names, pretrained_cfg=cfg, provenance=provenance,
                         model_name=model.info.get('model_name'),
                         model_kwargs=dict(model.info.get('model_kwargs') or {}))


def _from_registry(name: str, *, source: str, pretrained: bool, model_kwargs, num_classes, labels,
                   pretrained_cfg_overlay, cache_dir, token) -> ResolvedModel:
    import timm
    arch = check_model_name(name, what=f'{name!r}', param='source')
    kwargs = _user_kwargs(model_kwargs, num_classes)
    if not pretrained:
        extra = {'pretrained_cfg_overlay': pretrained_cfg_overlay} if pretrained_cfg_overlay else {}
        try:
            model = timm.create_model(name, pretrained=False, **kwargs, **extra)
        except Exception as e:  # model constructors raise anything for bad arguments
            raise ConfigError(f'cannot build {name}({format_kwargs(kwargs)}): {first_line(e)}',
                              param='model_kwargs') from e
        return _finish(model, {}, labels, None, Provenance(source=source, kind='random-init'), arch, kwargs)
    from timm.models import get_pretrained_cfg
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as e:  # an unknown pretrained tag
        raise ModelSourceError(f'{name} has no such pretrained tag ({e}): use one listed by '
                               f'timm.list_pretrained({arch + "*"!r})', param='source') from e
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ModelSourceError(f'{name} has no published weights: build it without pretrained weights, or load a '
                               f'checkpoint', param='source')
    if cfg.hf_hub_id:
        repo_id, revision = parse_hub_source(cfg.hf_hub_id)
        snap = fetch_hub_model(repo_id, revision, cache_dir, token)
        resolved = _from_hub_folder(snap.folder, source=source, kind='pretrained', model_name=name,
                                    model_kwargs=kwargs, num_classes=None, labels=labels,
                                    pretrained_cfg_overlay=pretrained_cfg_overlay, weights=snap.weights,
                                    sha256=snap.sha256, repo_id=repo_id, revision=snap.commit)
        resolved.model_name = arch
        return resolved
    try:  # timm's own download of a url-only tag (no Hub checksum to verify against)
        model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:
        raise ModelSourceError(f'cannot load the pretrained weights of {name} ({first_line(e)})',
                               param='source') from e
    return _finish(model, {}, labels, None, Provenance(source=source, kind='pretrained'), arch, kwargs)


def resolve_model(
        source: Union[str, os.PathLike, nn.Module],
        *,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        num_classes: Optional[int] = None,
        labels: LabelSource = None,
        pretrained: bool = False,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        use_ema: bool = False,
        allow_onnx: bool = False,
        onnx_options: Optional[Dict[str, Any]] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        token: Optional[str] = None,
) -> ResolvedModel:
    """Turn any model source into a model (eval mode), its label names, pretrained_cfg and provenance.

    Args:
        source: A timm name, ``hf-hub:ORG/NAME[@REV]``, ``local-dir:PATH``, a hub-layout folder, a train.py
            checkpoint (``.pth``, ``.pth.tar``, ``.safetensors``), an ``.onnx`` file (with ``allow_onnx``), or a
            module (kept as is).
        model_name: Architecture for weights that do not record one (overrides what they record).
        model_kwargs: Model arguments overriding the recorded ones (e.g. ``width_mult``, ``fc_dim``).
        num_classes: Classifier size (default: the recorded one, else the classifier weight's).
        labels: Class names: a list, a text file (one per line) or an ImageFolder (see ``read_label_names``);
            default: the source's own, when it records them.
        pretrained: For a timm name: load its pretrained tag's published weights (verified like ``hf-hub:``).
        pretrained_cfg_overlay: Entries set on the model's pretrained_cfg (e.g. ``tag``, ``license``).
        use_ema: Read the EMA weights of a train.py checkpoint.
        allow_onnx: Accept an ``.onnx`` file (the model is then an ``OnnxModel``; ``onnx_options`` go to it).
        cache_dir, token: For Hub downloads (default: huggingface_hub's cache and token).

    Raises:
        ModelSourceError, CheckpointError, ConfigError, HubError: with ``param`` naming the argument to change.
    """
    if isinstance(source, nn.Module):  # the caller's module: not put in eval mode or otherwise changed
        cfg = dict(getattr(source, 'pretrained_cfg', None) or {})
        names = _labels(labels, cfg.get('label_names'), int(getattr(source, 'num_classes', 0) or 0))
        if names is not None:
            cfg['label_names'] = names
        return ResolvedModel(model=source, label_names=names, pretrained_cfg=cfg,
                             provenance=Provenance(source=type(source).__name__, kind='module'),
                             model_name=cfg.get('architecture'))
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise ModelSourceError(f'a model source is a name, hub id or path, not {type(source).__name__}',
                               param='source')
    spec = str(source)
    if use_ema and not (os.path.isfile(spec) and not spec.endswith(('.onnx', '.safetensors'))):
        raise ConfigError(f'EMA weights (use_ema) exist only in train.py checkpoints; {spec} is not one',
                          param='use_ema')
    common = dict(model_name=model_name, model_kwargs=model_kwargs, num_classes=num_classes, labels=labels,
                  pretrained_cfg_overlay=pretrained_cfg_overlay)
    if spec.startswith('hf-hub:'):
        repo_id, revision = parse_hub_source(spec[len('hf-hub:'):])
        snap = fetch_hub_model(repo_id, revision, cache_dir, token)
        return _from_hub_folder(snap.folder, source=spec, kind='hf-hub', weights=snap.weights, sha256=snap.sha256,
                                repo_id=repo_id, revision=snap.commit, **common)
    local_dir = spec.startswith('local-dir:')
    path = Path(spec[len('local-dir:'):] if local_dir else spec)
    if local_dir or path.is_dir():
        if not path.is_dir():
            raise ModelSourceError(f'{path}: no such folder: give a folder with {CONFIG_NAME} and {WEIGHTS_NAME}',
                                   param='source')
        if not (path / CONFIG_NAME).is_file():
            found = sorted(p.name for p in path.iterdir() if p.name.endswith(CHECKPOINT_SUFFIXES))[:8]
            raise ModelSourceError(f'{path} is a folder without {CONFIG_NAME}, not a timm model folder: give one of '
                                   f'its checkpoint files ({", ".join(found) or "none found"}) or a folder holding '
                                   f'{CONFIG_NAME} and {WEIGHTS_NAME}', param='source')
        return _from_hub_folder(path, source=spec, kind='local-dir', **common)
    if path.is_file():
        if path.suffix == '.onnx':
            if not allow_onnx:
                raise ModelSourceError(f'{path} is an ONNX graph; this needs a PyTorch model (a timm name, hub id, '
                                       f'hub folder or checkpoint)', param='source')
            if model_name or model_kwargs or num_classes is not None or pretrained:
                raise ConfigError('an ONNX file carries its own configuration: model name, kwargs, num_classes and '
                                  'pretrained do not apply to it', param='model_kwargs')
            return _from_onnx(path, spec, labels, onnx_options)
        if path.name == WEIGHTS_NAME and (path.parent / CONFIG_NAME).is_file():  # the weights of a hub folder
            return _from_hub_folder(path.parent, source=spec, kind='local-dir', **common)
        return model_from_checkpoint(read_checkpoint(path, use_ema=use_ema), source=spec, **common)
    if spec.endswith((*CHECKPOINT_SUFFIXES, '.onnx')) or os.sep in spec or (os.altsep and os.altsep in spec):
        raise ModelSourceError(f'{spec}: no such file or folder: check the path', param='source')
    if model_name:
        raise ConfigError(f'{spec} is a model name already; a separate architecture applies only to weights files',
                          param='model_name')
    return _from_registry(spec, source=spec, pretrained=pretrained, cache_dir=cache_dir, token=token,
                          **{k: v for k, v in common.items() if k != 'model_name'})
