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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import ConfigError, ModelSourceError, OnnxModelError, OutputError
from ..inference.predictor import receptive_field
from ..outputs import check_destination, final_data, finished_output_files
from ..sources.resolve import resolve_model as _resolve
from .graph_forms import optimize_for_ort
from .runtime import METADATA_FORMAT, METADATA_KEY, PRETRAINED_CFG_KEY

__all__ = ['export_onnx', 'resolve_model', 'OnnxExport', 'split_paths', 'check_export_destination']


@dataclass
class OnnxExport:
    """Paths written by :func:`export_onnx` (``backbone`` and ``head`` only with ``split=True``)."""
    model: Path
    backbone: Optional[Path] = None
    head: Optional[Path] = None
    parity: Dict[str, float] = field(default_factory=dict)  # graph -> max |ONNX Runtime - PyTorch| (when verified)

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
# Where the model comes from: timm_prelu.sources.resolve_model


def _state_dict_sha256(model: nn.Module) -> str:
    """Digest of the weights themselves, so two exports can be matched to the same parameters."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to('cpu').contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def resolve_model(
        spec: Union[str, os.PathLike, nn.Module],
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        pretrained: bool = False,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """(model, source facts) of ``timm_prelu.sources.resolve_model``; kept for callers of the old name."""
    resolved = _resolve(spec, model_name=model_name, model_kwargs=model_kwargs, num_classes=num_classes,
                        pretrained=pretrained)
    return resolved.model, resolved.source_info()


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
        raise OnnxModelError(f'torch.onnx.export failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}): '
                        f'check the opset and that the model is a PReLU-net', param='opset') from e
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
            raise ConfigError(f'{len(label_names)} label names given for a model with {num_classes} classes: '
                            f'give exactly one name per class', param='labels')
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


def _verify(path: Path, model: nn.Module, graph: str, fp16: bool, example: torch.Tensor) -> float:
    """Run the written graph once with ONNX Runtime and compare with PyTorch: catches a broken export early."""
    from .runtime import OnnxModel
    with torch.no_grad():
        x = example.float()
        ref = _GRAPHS[graph][0](model)(x).cpu().numpy()
    out = OnnxModel(path, providers='cpu').run(x.cpu().numpy())
    err = float(abs(out - ref).max())
    tol = (2e-2 if fp16 else 1e-3) * max(1.0, float(abs(ref).max()))
    if out.shape != ref.shape or not err <= tol:
        raise OnnxModelError(f'the exported {graph} graph does not match PyTorch (max abs diff {err:.3g} > {tol:.3g}): '
                        f'report this with your torch / onnxscript versions')
    return err


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
        label_names: Union[Sequence[str], str, os.PathLike, None] = None,
        input_size: Optional[int] = None,
        verify: bool = True,
        overwrite: bool = False,
        use_ema: bool = False,
        ort_forms: bool = True,
        progress: Optional[Callable[[str], None]] = None,
) -> OnnxExport:
    """Export a PReLU-net to ONNX with dynamic batch, height and width; atomically, checked, with metadata.

    Args:
        model_or_name: A model, timm name, 'hf-hub:' id, hub-layout folder or checkpoint
            (see :func:`timm_prelu.sources.resolve_model`).
        path: The model graph's file (image -> logits); ``split`` adds ``<stem>.backbone.onnx`` / ``.head.onnx``.
        opset: ONNX opset (default: torch's default, 20 for torch 2.14 / 18 and up are fine).
        fp16: Half-precision weights and compute behind float32 inputs/outputs (for GPUs; CPU runs it slowly).
        split: Also write the backbone and head graphs for dense multi-view inference.
        model_name: Architecture of a checkpoint that does not record one.
        model_kwargs: ``timm.create_model`` kwargs (e.g. ``width_mult=0.125, fc_dim=64``).
        num_classes: Classifier size when building by name.
        pretrained: Load the pretrained weights of a plain model name.
        label_names: Class names in class-index order (a list, a text file or an ImageFolder), stored in the
            metadata; default: the source's own.
        input_size: Training image size (sets pretrained_cfg input_size, hence the dense window = size / 16).
        verify: Run each written graph once in ONNX Runtime against PyTorch before keeping it.
        overwrite: Replace existing files at the output paths if timm-prelu exported them (never other files).
        use_ema: Export the EMA weights of a train.py checkpoint.
        ort_forms: Write PReLUs and fc layers in the exact forms ONNX Runtime runs fastest on CPUs (see
            :func:`timm_prelu.onnx_model.graph_forms.optimize_for_ort`); standard ops, any runtime runs them.
        progress: Called with a line naming each stage as it starts (a full-size export takes tens of seconds).

    Returns:
        The paths written and, when verified, each graph's max |ONNX Runtime - PyTorch| (``OnnxExport``).
    """
    import onnx
    source_path = model_or_name if isinstance(model_or_name, (str, os.PathLike)) and os.path.exists(model_or_name) \
        else None
    check_export_destination(path, split=split, overwrite=overwrite, inputs=[source_path])
    stage = progress or (lambda _: None)
    stage('loading the model')
    resolved = _resolve(model_or_name, model_name=model_name, model_kwargs=model_kwargs, num_classes=num_classes,
                        labels=label_names, pretrained=pretrained, use_ema=use_ema)
    model, source, label_names = resolved.model, resolved.source_info(), resolved.label_names
    for attr in ('forward_features', 'forward_head', 'num_features', 'num_classes'):
        if not hasattr(model, attr):
            raise ModelSourceError(f'{type(model).__name__} is not a PReLU-net (it lacks {attr}): export a prelu_model_*',
                                   param='model')
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
    parity: Dict[str, float] = {}
    try:
        with finished_output_files(list(targets.values()), overwrite, inputs=[source_path], param='path') as temps:
            protos = {}
            for graph in ('backbone', 'head') if split else ('model',):
                wrapper, arg_name, out_name = _GRAPHS[graph]
                stage(f'exporting the {graph} graph (torch.onnx, dynamic batch, height and width)')
                protos[graph] = _export_graph(wrapper(export_model, half=fp16), examples[arg_name], arg_name,
                                              out_name, 1 if graph == 'head' else min_size, opset)
            if split:
                protos['model'] = _compose(protos['backbone'], protos['head'])
            for graph, tmp in zip(targets, temps):
                proto = protos.pop(graph)  # released once saved: full-size graphs are about 1 GB each
                stage(f'writing {targets[graph].name}' + (" (ONNX Runtime's graph forms)" if ort_forms else ''))
                if ort_forms:
                    optimize_for_ort(proto, inplace=True)
                arg_name = _GRAPHS[graph][1]
                used_opset = next(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx'))
                info = _metadata(model, name, source, graph, export_id, fp16, used_opset,
                                 split_names if graph == 'model' else None, weights_sha256)
                info['graph_forms'] = 'onnxruntime' if ort_forms and not fp16 else 'plain'  # fp16: left as is
                onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(info),
                                                    PRETRAINED_CFG_KEY: json.dumps(cfg)})
                proto.doc_string = f'{name} ({graph}) exported by timm-prelu; PReLU-nets, He et al. ICCV 2015'
                onnx.save(proto, str(tmp))
                del proto
                onnx.checker.check_model(str(tmp), full_check=True)
                if verify:
                    stage(f'checking the {graph} graph in ONNX Runtime against PyTorch')
                    parity[graph] = _verify(tmp, model, graph, fp16, examples[arg_name])
    finally:
        model.train(was_training)
    return OnnxExport(path, backbone_path if split else None, head_path if split else None, parity)
