"""Export PReLU-nets to ONNX: one graph with dynamic batch, height and width, and timm's config in its metadata.

The spatial pyramid pooling turns any feature map into the same vector, so a single graph serves every image size
(``torch.onnx.export(dynamo=True)`` with symbolic batch / height / width). ``split=True`` also writes the two graphs
the paper's dense multi-view test needs: ``<name>.backbone.onnx`` (image -> last conv feature map) and
``<name>.head.onnx`` (feature windows -> logits). Every graph passes ``onnx.checker`` and carries, in
``metadata_props``, timm's pretrained_cfg (mean, std, interpolation, crop_pct, input_size, num_classes, label names)
and where the weights came from (model name and kwargs, hub revision or checkpoint sha256), read back by
:class:`timm_prelu.onnx_runtime.OnnxModel`. Files appear only when the whole export succeeded.

Example::

    export_onnx('prelu_model_a', 'a.onnx', model_kwargs=dict(width_mult=0.125), split=True)
"""
import copy
import datetime
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import OutputError, UserError
from ..inference.predictor import receptive_field
from ..outputs import check_destination, final_data, finished_output_files
from .runtime import METADATA_FORMAT, METADATA_KEY, PRETRAINED_CFG_KEY

__all__ = ['export_onnx', 'resolve_model', 'OnnxExport', 'split_paths', 'check_export_destination',
           'CHECKPOINT_SUFFIXES']

CHECKPOINT_SUFFIXES = ('.safetensors', '.pth', '.pth.tar', '.pt', '.bin')


@dataclass
class OnnxExport:
    """Paths written by :func:`export_onnx` (``backbone`` and ``head`` only with ``split=True``)."""
    model: Path
    backbone: Optional[Path] = None
    head: Optional[Path] = None

    @property
    def paths(self) -> List[Path]:
        return [p for p in (self.model, self.backbone, self.head) if p is not None]


def split_paths(path: Union[str, os.PathLike]) -> Tuple[Path, Path]:
    """Where ``split=True`` puts the backbone and head graphs for a model graph at ``path``."""
    path = Path(path)
    stem = path.name[:-len('.onnx')] if path.name.endswith('.onnx') else path.name
    return path.with_name(f'{stem}.backbone.onnx'), path.with_name(f'{stem}.head.onnx')


def check_export_destination(path: Union[str, os.PathLike], split: bool = False, overwrite: bool = False,
                             inputs: Sequence[Union[str, os.PathLike, None]] = ()) -> List[Path]:
    """Check every file an export to ``path`` writes (see :func:`timm_prelu.outputs.check_destination`), before
    any model is built; returns them (model graph first). An existing file is replaced only with ``overwrite`` and
    only if it is an ONNX file timm-prelu exported."""
    path = Path(path)
    if not path.name.endswith('.onnx') or path.name == '.onnx':
        raise OutputError(f'{path}: the output file must end in .onnx (e.g. model.onnx)', param='path')
    targets = [path, *split_paths(path)] if split else [path]
    return [check_destination(t, kind='file', overwrite=overwrite, inputs=inputs, param='path') for t in targets]


# ---------------------------------------------------------------------------------------------------------------
# Where the model comes from


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _state_dict_sha256(model: nn.Module) -> str:
    """Digest of the weights themselves, so two exports can be matched to the same parameters."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to('cpu').contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _hub_revision(repo_spec: str) -> Dict[str, Any]:
    """Commit and weight-file sha256 of a hub repo already downloaded into the local cache."""
    from huggingface_hub import try_to_load_from_cache
    repo_id, _, revision = repo_spec.partition('@')
    info: Dict[str, Any] = {'kind': 'hf-hub', 'repo_id': repo_id, 'revision': revision or 'main'}
    for filename in ('model.safetensors', 'pytorch_model.bin'):
        cached = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(cached, str):
            cached = Path(cached)
            info.update(commit=cached.parent.name, file=filename, sha256=_sha256(cached),
                        model_kwargs=_config_model_args(cached.with_name('config.json')))
            break
    return info


def _config_model_args(config_json: Path) -> Dict[str, Any]:
    """The ``model_args`` timm's save_for_hf recorded in a hub folder's config.json."""
    try:
        return dict(json.loads(config_json.read_text()).get('model_args') or {})
    except (OSError, ValueError, AttributeError):
        return {}


def _train_label_names(args: Dict[str, Any]) -> Optional[List[str]]:
    """Class names of the ImageFolder train.py read (its class folders, in timm's natural order), if still there."""
    from timm.utils import natural_key
    data_dir = args.get('data_dir') or args.get('data')
    if args.get('dataset') or not data_dir:
        return None
    root = Path(data_dir) / (args.get('train_split') or 'train')
    if not root.is_dir():
        return None
    return sorted((d.name for d in root.iterdir() if d.is_dir()), key=natural_key) or None


def _checkpoint_model(
        path: Path,
        model_name: Optional[str],
        model_kwargs: Dict[str, Any],
        num_classes: Optional[int],
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the model of a train.py checkpoint or .safetensors file (read safely by timm_prelu.checkpoints)."""
    from ..sources.checkpoints import create_model_from_checkpoint, read_checkpoint
    ckpt = read_checkpoint(path)
    overrides = dict(model_kwargs, **({'num_classes': num_classes} if num_classes is not None else {}))
    model = create_model_from_checkpoint(ckpt, model_name=model_name, model_kwargs=overrides)
    args = ckpt.args
    cfg: Dict[str, Any] = {}
    if args.get('input_size'):
        cfg['input_size'] = tuple(args['input_size'])
    elif args.get('img_size'):
        cfg['input_size'] = (args.get('in_chans') or 3, args['img_size'], args['img_size'])
    for k in ('mean', 'std', 'interpolation', 'crop_pct'):
        if args.get(k):
            cfg[k] = tuple(args[k]) if isinstance(args[k], list) else args[k]
    labels = _train_label_names(args)
    config_json = path.with_name('config.json')
    if path.name.endswith('.safetensors') and config_json.is_file():  # timm's hub layout describes its weights
        try:
            config = json.loads(config_json.read_text())
        except (OSError, ValueError):
            config = {}
        keep = ('input_size', 'mean', 'std', 'interpolation', 'crop_pct', 'label_names')
        cfg.update({k: v for k, v in (config.get('pretrained_cfg') or {}).items() if k in keep and v})
        labels = config.get('label_names') or cfg.pop('label_names', None)
    if labels is not None and len(labels) == model.num_classes:
        cfg['label_names'] = labels
    model.pretrained_cfg = {**model.pretrained_cfg, **cfg}
    info = {'kind': 'checkpoint', 'file': path.name, 'sha256': _sha256(path),
            'model_kwargs': {**ckpt.model_kwargs, **overrides}}
    info.update({k: v for k, v in (('epoch', ckpt.epoch), ('metric', ckpt.metric), ('ema', ckpt.ema or None))
                 if v is not None})
    return model, info


def resolve_model(
        spec: Union[str, os.PathLike, nn.Module],
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        pretrained: bool = False,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A model from a timm name, an ``hf-hub:`` id, a local hub folder, a checkpoint file, or a module.

    Args:
        spec: 'prelu_model_a' (``pretrained`` says whether to load its weights), 'hf-hub:ORG/NAME[@REV]',
            a folder in timm's hub layout, a train.py ``.pth.tar`` / ``.safetensors`` file, or an ``nn.Module``.
        model_name: Architecture for a checkpoint that does not record it (a bare .safetensors).
        model_kwargs: Extra ``timm.create_model`` kwargs (e.g. ``width_mult``, ``fc_dim``).
        num_classes: Classifier size (default: the checkpoint's or the model's).
        pretrained: Load the registry tag's pretrained weights for a plain model name.

    Returns:
        The model in eval mode and a dict saying where it came from (``kind`` plus revision / sha256 facts).
    """
    import timm
    import timm_prelu  # noqa: F401  (registers the models)
    kwargs = dict(model_kwargs or {})
    if isinstance(spec, nn.Module):
        return spec, {'kind': 'module', 'model_kwargs': None}
    spec = str(spec)
    create_kwargs = dict(kwargs, **({'num_classes': num_classes} if num_classes is not None else {}))
    path = Path(spec[len('local-dir:'):] if spec.startswith('local-dir:') else spec)
    if spec.startswith('hf-hub:'):
        try:
            model = timm.create_model(spec, pretrained=True, **create_kwargs)
        except Exception as e:  # network, auth and 404 errors come from several libraries
            raise UserError(f'cannot load {spec} from the Hugging Face Hub ({type(e).__name__}: '
                            f'{str(e).splitlines()[0][:200] if str(e) else ""}): check the repo id, '
                            f'your network / HF_TOKEN, or use HF_HUB_OFFLINE=1 with a cached copy') from None
        source = _hub_revision(spec[len('hf-hub:'):])
        return model.eval(), {**source, 'model_kwargs': {**source.get('model_kwargs', {}), **kwargs}}
    if path.is_dir():
        try:
            model = timm.create_model(f'local-dir:{path}', pretrained=True, **create_kwargs)
        except Exception as e:
            raise UserError(f'{path}: not a timm model folder ({type(e).__name__}: {e}): it needs config.json and '
                            f'model.safetensors as `timm-prelu push --dry-run` writes them') from None
        weights = path / 'model.safetensors'
        recorded = _config_model_args(path / 'config.json')
        return model.eval(), {'kind': 'local-dir', 'folder': str(path), 'model_kwargs': {**recorded, **kwargs},
                       **({'sha256': _sha256(weights)} if weights.is_file() else {})}
    if path.is_file():
        return _checkpoint_model(path, model_name, kwargs, num_classes)
    if spec.endswith(CHECKPOINT_SUFFIXES) or os.sep in spec:
        raise UserError(f'{spec}: no such file or folder: check the path')
    if not timm.is_model(spec):
        names = ', '.join(timm.list_models('prelu_*'))
        raise UserError(f'unknown model {spec!r}: use a registered name ({names}), an hf-hub: id or a checkpoint file')
    try:
        model = timm.create_model(spec, pretrained=pretrained, **create_kwargs)
    except Exception as e:
        raise UserError(f'cannot build {spec} with {create_kwargs} ({type(e).__name__}: {e}): '
                        f'check the model kwargs, or drop --pretrained if its weights are not published') from None
    if not pretrained:
        return model.eval(), {'kind': 'random-init', 'model_kwargs': kwargs}
    hub_id = model.pretrained_cfg.get('hf_hub_id')
    source = _hub_revision(hub_id) if hub_id else {'kind': 'pretrained', 'url': model.pretrained_cfg.get('url')}
    return model.eval(), {**source, 'tag': model.pretrained_cfg.get('tag'),
                          'model_kwargs': {**source.get('model_kwargs', {}), **kwargs}}


# ---------------------------------------------------------------------------------------------------------------
# Graphs


class _Graph(nn.Module):
    """One of the three graphs; ``half`` runs it in float16 behind float32 inputs and outputs."""

    def __init__(self, model: nn.Module, half: bool = False):
        super().__init__()
        self.model = model
        self.half_precision = half

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float16) if self.half_precision else x


# torch.export names the graph inputs after the forward arguments: 'image' and 'features'
class _Full(_Graph):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(self._in(image)).float()


class _Backbone(_Graph):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(self._in(image)).float()


class _Head(_Graph):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self._in(features)).float()


_GRAPHS = {'model': (_Full, 'image', 'logits'), 'backbone': (_Backbone, 'image', 'features'),
           'head': (_Head, 'features', 'logits')}


def _export_graph(module: nn.Module, example: torch.Tensor, arg_name: str, output_name: str, min_size: int,
                  opset: Optional[int]):
    """One torch.onnx.export (dynamo) call with dynamic batch / height / width; returns the ModelProto."""
    from torch.export import Dim
    module.eval()
    prefix = 'feat_' if arg_name == 'features' else ''  # distinct symbols: a feature map is not image-sized
    dims = {0: Dim('batch'), 2: Dim(f'{prefix}height', min=min_size), 3: Dim(f'{prefix}width', min=min_size)}
    try:
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=opset, dynamic_shapes={arg_name: dims},
            output_names=[output_name], verbose=False)
    except Exception as e:
        raise UserError(f'torch.onnx.export failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}): '
                        f'check the opset (--opset) and that the model is a PReLU-net') from e
    return program.model_proto


def _compose(backbone, head):
    """The model graph as backbone then head (same ops as one export, one torch.export fewer)."""
    import onnx.compose
    for proto in (backbone, head):  # each graph gets its own metadata after composing
        del proto.metadata_props[:]
    head = onnx.compose.add_prefix(head, 'head/', rename_inputs=False, rename_outputs=False)
    return onnx.compose.merge_models(backbone, head, io_map=[('features', 'features')])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _pretrained_cfg(model: nn.Module, source: Dict[str, Any], label_names: Optional[Sequence[str]],
                    input_size: Optional[int]) -> Dict[str, Any]:
    """timm's pretrained_cfg for the metadata, with the real num_classes and label names when known."""
    from timm.data import ImageNetInfo, infer_imagenet_subset
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    cfg.setdefault('mean', (0.485, 0.456, 0.406))
    cfg.setdefault('std', (0.229, 0.224, 0.225))
    cfg.setdefault('interpolation', 'bilinear')
    cfg.setdefault('crop_pct', 0.875)
    cfg.setdefault('input_size', (3, 224, 224))
    if input_size is not None:
        cfg['input_size'] = (cfg['input_size'][0], input_size, input_size)
    num_classes = getattr(model, 'num_classes', cfg.get('num_classes'))
    cfg['num_classes'] = num_classes
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if len(label_names) != num_classes:
            raise UserError(f'{len(label_names)} label names given for a model with {num_classes} classes: '
                            f'give exactly one name per class')
        cfg['label_names'] = label_names
        cfg.pop('label_descriptions', None)
    elif cfg.get('label_names') is not None and len(cfg['label_names']) != num_classes:
        cfg.pop('label_names')
    elif 'label_names' not in cfg and source['kind'] in ('hf-hub', 'pretrained', 'local-dir'):
        subset = infer_imagenet_subset(cfg)  # published ImageNet weights: timm knows their classes
        if subset:
            info = ImageNetInfo(subset)
            cfg['label_names'] = info.label_names()
            cfg['label_descriptions'] = info.label_descriptions()
    return _jsonable(cfg)


def _metadata(model: nn.Module, model_name: str, source: Dict[str, Any], graph: str, export_id: str,
              fp16: bool, opset: int, split_names: Optional[Dict[str, str]], weights_sha256: str) -> Dict[str, Any]:
    import onnxruntime
    import timm
    import timm_prelu
    rf = receptive_field(model)
    info = {
        'format': METADATA_FORMAT,
        'graph': graph,
        'export_id': export_id,
        'model_name': model_name,
        'model_kwargs': source.get('model_kwargs'),
        'num_classes': int(model.num_classes),
        'in_chans': int(getattr(model, 'in_chans', 3)),
        'num_features': int(model.num_features),
        'min_input_size': int(getattr(model, 'min_input_size', 1)),
        'feature_stride': rf.stride,
        'receptive_field': {'size': rf.size, 'stride': rf.stride, 'padding': rf.padding},
        'dtype': 'float16' if fp16 else 'float32',
        'io_dtype': 'float32',
        'opset': opset,
        'source': {k: v for k, v in source.items() if k != 'model_kwargs'},
        'weights_sha256': weights_sha256,
        'exported': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'versions': {'timm_prelu': timm_prelu.__version__, 'timm': timm.__version__, 'torch': torch.__version__,
                     'onnxruntime_at_export': onnxruntime.__version__},
    }
    if split_names:
        info['split'] = split_names
    return _jsonable(info)


def _verify(path: Path, model: nn.Module, graph: str, fp16: bool, example: torch.Tensor) -> None:
    """Run the written graph once with ONNX Runtime and compare with PyTorch: catches a broken export early."""
    from .runtime import OnnxModel
    with torch.no_grad():
        x = example.float()
        ref = _GRAPHS[graph][0](model)(x).cpu().numpy()
    out = OnnxModel(path, providers='cpu').run(x.cpu().numpy())
    err = float(abs(out - ref).max())
    tol = (2e-2 if fp16 else 1e-3) * max(1.0, float(abs(ref).max()))
    if out.shape != ref.shape or not err <= tol:
        raise UserError(f'the exported {graph} graph does not match PyTorch (max abs diff {err:.3g} > {tol:.3g}): '
                        f'report this with your torch / onnxscript versions')


def export_onnx(
        model_or_name: Union[str, os.PathLike, nn.Module],
        path: Union[str, os.PathLike],
        opset: Optional[int] = None,
        fp16: bool = False,
        split: bool = False,
        *,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        pretrained: bool = False,
        label_names: Optional[Sequence[str]] = None,
        input_size: Optional[int] = None,
        verify: bool = True,
        overwrite: bool = False,
) -> OnnxExport:
    """Export a PReLU-net to ONNX with dynamic batch, height and width; atomically, checked, with metadata.

    Args:
        model_or_name: A model, timm name, 'hf-hub:' id, hub-layout folder or checkpoint (see ``resolve_model``).
        path: The model graph's file (image -> logits); ``split`` adds ``<stem>.backbone.onnx`` / ``.head.onnx``.
        opset: ONNX opset (default: torch's default, 20 for torch 2.14 / 18 and up are fine).
        fp16: Half-precision weights and compute behind float32 inputs/outputs (for GPUs; CPU runs it slowly).
        split: Also write the backbone and head graphs for dense multi-view inference.
        model_name: Architecture of a checkpoint that does not record one.
        model_kwargs: ``timm.create_model`` kwargs (e.g. ``width_mult=0.125, fc_dim=64``).
        num_classes: Classifier size when building by name.
        pretrained: Load the pretrained weights of a plain model name.
        label_names: Class names in class-index order, stored in the metadata.
        input_size: Training image size (sets pretrained_cfg input_size, hence the dense window = size / 16).
        verify: Run each written graph once in ONNX Runtime against PyTorch before keeping it.
        overwrite: Replace existing files at the output paths if timm-prelu exported them (never other files).

    Returns:
        The paths written (``OnnxExport``).
    """
    import onnx
    source_path = model_or_name if isinstance(model_or_name, (str, os.PathLike)) and os.path.exists(model_or_name) \
        else None
    check_export_destination(path, split=split, overwrite=overwrite, inputs=[source_path])
    model, source = resolve_model(model_or_name, model_name=model_name, model_kwargs=model_kwargs,
                                  num_classes=num_classes, pretrained=pretrained)
    for attr in ('forward_features', 'forward_head', 'num_features', 'num_classes'):
        if not hasattr(model, attr):
            raise UserError(f'{type(model).__name__} is not a PReLU-net (it lacks {attr}): export a prelu_model_*')
    path = Path(path)
    name = getattr(model, 'pretrained_cfg', {}).get('architecture') or model_name or type(model).__name__
    # a source inside an output being written (a hub folder in the demo's) is recorded where it will be when finished
    cfg = final_data(_pretrained_cfg(model, source, label_names, input_size))
    source = final_data(source)

    was_training = model.training
    model.eval()
    export_model = copy.deepcopy(model).half() if fp16 else model
    device = next(model.parameters()).device
    min_size = int(getattr(model, 'min_input_size', 16))
    image = torch.randn(2, int(getattr(model, 'in_chans', 3)), 64, 80, device=device)  # batch 2, non-square
    with torch.no_grad():
        features = model.forward_features(image)[:, :, :3, :4].contiguous()
    examples = {'image': image, 'features': features}

    export_id = uuid.uuid4().hex
    weights_sha256 = _state_dict_sha256(model)
    backbone_path, head_path = split_paths(path)
    targets = {'model': path, **({'backbone': backbone_path, 'head': head_path} if split else {})}
    split_names = {'backbone': backbone_path.name, 'head': head_path.name} if split else None
    try:
        with finished_output_files(list(targets.values()), overwrite, inputs=[source_path], param='path') as temps:
            protos = {}
            for graph in ('backbone', 'head') if split else ('model',):
                wrapper, arg_name, out_name = _GRAPHS[graph]
                protos[graph] = _export_graph(wrapper(export_model, half=fp16), examples[arg_name], arg_name,
                                              out_name, 1 if graph == 'head' else min_size, opset)
            if split:
                protos['model'] = _compose(protos['backbone'], protos['head'])
            for graph, tmp in zip(targets, temps):
                proto = protos.pop(graph)  # released once saved: full-size graphs are about 1 GB each
                arg_name = _GRAPHS[graph][1]
                used_opset = next(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx'))
                info = _metadata(model, name, source, graph, export_id, fp16, used_opset,
                                 split_names if graph == 'model' else None, weights_sha256)
                onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(info),
                                                    PRETRAINED_CFG_KEY: json.dumps(cfg)})
                proto.doc_string = f'{name} ({graph}) exported by timm-prelu; PReLU-nets, He et al. ICCV 2015'
                onnx.save(proto, str(tmp))
                del proto
                onnx.checker.check_model(str(tmp), full_check=True)
                if verify:
                    _verify(tmp, model, graph, fp16, examples[arg_name])
    finally:
        model.train(was_training)
    return OnnxExport(path, backbone_path if split else None, head_path if split else None)
