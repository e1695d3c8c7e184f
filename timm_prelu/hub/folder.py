"""A model's Hub repo folder in timm's layout: config.json + model.safetensors (timm's ``save_for_hf``), README.md
and optionally model.onnx; and the summary of what it holds, shown before anything is uploaded.

The model comes through :func:`timm_prelu.sources.resolve_model`; its label names are the ones the source records
or the caller names, never ones a checkpoint's recorded arguments point at.
"""
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch.nn as nn

from ..errors import ConfigError, ModelSourceError, OnnxModelError
from ..sources.hub import WEIGHTS_NAME
from ..sources.resolve import ResolvedModel, parse_hub_source, resolve_model
from .card import DATA_CONFIG_ARGS, model_card, recorded_metrics

__all__ = ['WEIGHTS_NAME', 'ONNX_NAME', 'build_hub_folder', 'write_hub_folder', 'load_for_hub', 'folder_summary',
           'check_repo_id']

ONNX_NAME = 'model.onnx'
LabelSource = Union[str, os.PathLike, Sequence[str], None]


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is ORG/NAME (no revision), else a ConfigError."""
    if not isinstance(repo_id, str) or '@' in repo_id:
        raise ConfigError(f'invalid repo id {repo_id!r}: use ORG/NAME, e.g. timm-prelu/prelu_model_c.in1k',
                          param='repo_id')
    try:
        parse_hub_source(repo_id)
    except ModelSourceError as e:
        raise ConfigError(f'invalid repo id {repo_id!r}: use ORG/NAME (letters, digits, "-", "_", "."), e.g. '
                          f'timm-prelu/prelu_model_c.in1k', param='repo_id') from e
    return repo_id


def load_for_hub(source: Union[str, os.PathLike], repo_id: str, *, use_ema: bool = False,
                 model_name: Optional[str] = None, model_kwargs: Optional[Dict[str, Any]] = None,
                 num_classes: Optional[int] = None, label_names: LabelSource = None,
                 license: str = 'apache-2.0') -> ResolvedModel:
    """The model to publish, its pretrained_cfg describing these weights (tag from the repo name, license)."""
    check_repo_id(repo_id)
    name = repo_id.split('/')[-1]
    overlay = {'tag': name.split('.', 1)[1] if '.' in name else None, 'license': license}
    return resolve_model(source, model_name=model_name, model_kwargs=model_kwargs, num_classes=num_classes,
                         labels=label_names, use_ema=use_ema, pretrained_cfg_overlay=overlay)


def build_hub_folder(
        checkpoint: Union[str, os.PathLike],
        out_dir: Union[str, os.PathLike],
        repo_id: str,
        *,
        use_ema: bool = False,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        label_names: LabelSource = None,
        dataset: Optional[str] = None,
        license: str = 'apache-2.0',
        onnx: bool = False,
        onnx_exporter: Optional[Callable[[nn.Module, Path], Any]] = None,
        overwrite: bool = False,
        show: Optional[Callable[[str], None]] = None,
) -> Path:
    """Write the repo folder for a model source to ``out_dir`` (what ``push --dry-run`` does), complete or absent.

    ``out_dir`` is checked before the model is loaded and written through
    :func:`timm_prelu.outputs.finished_output_dir`: an existing folder is replaced only with ``overwrite`` and
    only when this tool wrote it. ``show`` receives the summary of the folder.
    """
    from ..outputs import finished_output_dir
    check_repo_id(repo_id)
    inputs = [checkpoint] if Path(str(checkpoint)).exists() else []
    with finished_output_dir(out_dir, overwrite, inputs=inputs, kind='hub', param='out_dir') as work:
        resolved = load_for_hub(checkpoint, repo_id, use_ema=use_ema, model_name=model_name,
                                model_kwargs=model_kwargs, num_classes=num_classes, label_names=label_names,
                                license=license)
        write_hub_folder(resolved, work, repo_id, dataset=dataset, license=license, onnx=onnx,
                         onnx_exporter=onnx_exporter)
        if show is not None:
            show(folder_summary(work, resolved))
    return Path(out_dir).resolve()


def write_hub_folder(
        resolved: ResolvedModel,
        folder: Union[str, os.PathLike],
        repo_id: str,
        *,
        dataset: Optional[str] = None,
        license: str = 'apache-2.0',
        onnx: bool = False,
        onnx_exporter: Optional[Callable[[nn.Module, Path], Any]] = None,
) -> None:
    """Write config.json + model.safetensors (timm's ``save_for_hf``), README.md and optionally model.onnx."""
    from timm.models import save_for_hf
    folder = Path(folder)
    model, ckpt, labels = resolved.model, resolved.checkpoint, resolved.label_names
    data_config = {k: v for k, v in resolved.data_config.items() if k in DATA_CONFIG_ARGS}
    model_config = {'label_names': list(labels)} if labels else None
    save_for_hf(model, folder, model_config=model_config, safe_serialization=True, data_config=data_config or None)
    if onnx:
        exporter = onnx_exporter or _default_onnx_exporter(labels, data_config)
        exporter(model, folder / ONNX_NAME)
        if not (folder / ONNX_NAME).is_file():
            raise OnnxModelError('the ONNX exporter wrote no model.onnx', param='onnx_exporter')
    args = ckpt.args if ckpt is not None else {}
    weights_from = resolved.provenance.repo_id or resolved.provenance.kind
    card = model_card(model, ckpt, repo_id, dataset=dataset or _dataset_name(args), license=license,
                      has_onnx=onnx, data_config=data_config, label_names=labels, weights_from=weights_from)
    (folder / 'README.md').write_text(card, encoding='utf-8')


def folder_summary(folder: Union[str, os.PathLike], resolved: ResolvedModel) -> str:
    """What a repo folder holds, as shown before an upload: files and sizes, label names, recorded metrics."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    lines = [f'{resolved.model_name} ({resolved.num_classes} classes) from {resolved.provenance.kind} '
             f'{Path(resolved.provenance.file).name if resolved.provenance.file else resolved.provenance.source}:']
    lines += [f'  {p.name:<20} {_size(p.stat().st_size):>10}' for p in files]
    names = resolved.label_names
    lines.append('  label names: ' + (f'{len(names)} ({", ".join(names[:5])}{", ..." if len(names) > 5 else ""})'
                                      if names else 'none (classes are published as indices)'))
    metrics = recorded_metrics(resolved.checkpoint)
    lines.append('  metrics: ' + (', '.join(f'{k} {v:.4g}' for k, v in metrics.items()) if metrics else 'none'))
    return '\n'.join(lines)


def _size(n: int) -> str:
    for unit in ('B', 'KB', 'MB', 'GB'):
        if n < 1024 or unit == 'GB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return f'{n} B'


def _default_onnx_exporter(labels: Optional[List[str]],
                           data_config: Dict[str, Any]) -> Callable[[nn.Module, Path], Any]:
    """timm_prelu.onnx_model.export, imported only when asked for (it needs the onnx extras)."""
    try:
        from ..onnx_model.export import export_onnx
    except ImportError as e:
        raise OnnxModelError(f'exporting model.onnx needs the ONNX exporter ({e}); install the extras with '
                             f'`pip install "timm-prelu[onnx]"`, or publish without ONNX', param='onnx') from e
    size = data_config.get('img_size') or (data_config.get('input_size') or [None])[-1]
    return lambda model, path: export_onnx(model, path, label_names=labels, input_size=size)


def _dataset_name(args: Dict[str, Any]) -> Optional[str]:
    """A public name for the training data: never the local path (only its last component)."""
    dataset = args.get('dataset')
    if isinstance(dataset, str) and dataset:
        return dataset.split('/', 1)[-1] if '/' in dataset else dataset
    data_dir = args.get('data_dir') or args.get('data')
    return Path(data_dir).name if isinstance(data_dir, str) and data_dir else None
