"""The model card (README.md) of a published model: YAML metadata, details, recorded metrics, recipe, usage.

Everything on it comes from the model, the checkpoint's recorded data and what the caller chose; nothing a
checkpoint merely names (class maps, data folders) is read. A model that is not a PReLU-net is not called one.
"""
import csv
import math
from typing import Any, Dict, Optional, Sequence

import torch.nn as nn

from ..formatting import format_kwargs
from ..sources.checkpoints import TrainCheckpoint
from ..sources.resolve import is_prelu_net

__all__ = ['model_card', 'recorded_metrics', 'project_url']

MAX_SUMMARY_BYTES = 16 * 1024 * 1024
PAPER_BIBTEX = """@inproceedings{he2015delving,
  title={Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet Classification},
  author={He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian},
  booktitle={Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
  pages={1026--1034},
  year={2015}
}"""
TIMM_BIBTEX = """@misc{rw2019timm,
  author={Ross Wightman},
  title={PyTorch Image Models},
  year={2019},
  publisher={GitHub},
  journal={GitHub repository},
  doi={10.5281/zenodo.4414861},
  howpublished={\\url{https://github.com/huggingface/pytorch-image-models}}
}"""
# train.py arguments worth showing as the training recipe, in reading order.
RECIPE_ARGS = (
    'epochs', 'batch_size', 'grad_accum_steps', 'opt', 'lr', 'momentum', 'weight_decay', 'sched', 'warmup_epochs',
    'warmup_lr', 'min_lr', 'decay_rate', 'patience_epochs', 'smoothing', 'drop', 'drop_path', 'img_size',
    'input_size', 'scale', 'ratio', 'hflip', 'vflip', 'color_jitter', 'aa', 'reprob', 'mixup', 'cutmix',
    'model_ema', 'model_ema_decay', 'amp', 'amp_dtype', 'seed',
)
DATA_CONFIG_ARGS = ('input_size', 'img_size', 'in_chans', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


def recorded_metrics(ckpt: Optional[TrainCheckpoint]) -> Dict[str, float]:
    """Eval metrics train.py recorded for the checkpoint's epoch (summary.csv next to it), e.g. top1/top5 in %.

    Empty when they do not describe these weights: train.py evaluates the EMA weights when it keeps them, so
    without ``--ema`` a ``--model-ema`` run's numbers belong to other weights.
    """
    if ckpt is None or ckpt.epoch is None or bool(ckpt.args.get('model_ema')) != ckpt.ema:
        return {}
    summary = ckpt.path.parent / 'summary.csv'
    if not summary.is_file() or summary.stat().st_size > MAX_SUMMARY_BYTES:
        return {'top1': ckpt.metric} if ckpt.metric is not None and ckpt.args.get('eval_metric') == 'top1' else {}
    with summary.open(newline='', encoding='utf-8', errors='replace') as f:
        for row in csv.DictReader(f):
            if row.get('epoch') is not None and str(row['epoch']).strip() == str(ckpt.epoch):
                return {k[len('eval_'):]: value for k, v in row.items()
                        if isinstance(k, str) and k.startswith('eval_') and (value := _finite(v)) is not None}
    return {}


def _finite(text: Any) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def model_card(
        model: nn.Module,
        ckpt: Optional[TrainCheckpoint],
        repo_id: str,
        *,
        dataset: Optional[str] = None,
        license: str = 'apache-2.0',
        has_onnx: bool = False,
        data_config: Optional[Dict[str, Any]] = None,
        label_names: Optional[Sequence[str]] = None,
        weights_from: Optional[str] = None,
) -> str:
    """README.md: YAML metadata (library, tags, license, datasets, model-index) and how to use and cite it.

    ``data_config`` is the preprocessing of the published config (train.py's --img-size etc.); GMACs are counted
    at its input size.
    """
    from huggingface_hub import EvalResult, ModelCardData
    from timm.data import resolve_data_config
    from timm.models import get_model_args
    from ..models.complexity import count_macs, count_params

    arch = model.pretrained_cfg['architecture']
    model_args = get_model_args(model)
    data_cfg = resolve_data_config(dict(data_config or {}), model=model)
    input_size = tuple(data_cfg['input_size'])
    macs = count_macs(model, input_size)
    params = count_params(model)
    metrics = recorded_metrics(ckpt)
    args = ckpt.args if ckpt is not None else {}
    split = args.get('val_split') if isinstance(args.get('val_split'), str) else 'validation'
    prelu = is_prelu_net(model)
    eval_results = [
        EvalResult(task_type='image-classification', dataset_type=dataset or 'custom', dataset_name=dataset or 'custom',
                   dataset_split=split, metric_type='accuracy' if key == 'top1' else f'{key}_accuracy',
                   metric_name=f'{key.replace("top", "top-")} accuracy', metric_value=round(metrics[key], 4))
        for key in ('top1', 'top5') if key in metrics
    ]
    card_data = ModelCardData(
        library_name='timm', license=license, pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'timm-prelu'] + (['prelu'] if prelu else []),
        datasets=[dataset] if dataset else None, model_name=repo_id, eval_results=eval_results or None,
    )
    # what create_model needs beyond the defaults a reader would assume
    shown = {k: v for k, v in model_args.items()
             if k not in ('num_classes', 'global_pool') and not (k == 'in_chans' and v == 3)}
    kwargs_py = ''.join(f', {k}={v!r}' for k, v in shown.items())
    num_classes = model.num_classes
    tag_name = repo_id.split('/')[-1]
    registry_line = ''
    if tag_name.startswith(f'{arch}.'):
        registry_line = (f"\n# 2. through the pretrained tag's hf_hub_id (the org must be {repo_id.split('/')[0]}):\n"
                         f"model = timm.create_model('{tag_name}', pretrained=True{kwargs_py},\n"
                         f"                          pretrained_cfg_overlay=dict(num_classes={num_classes}))\n")
    else:
        registry_line = (f"\n# 2. the registered architecture, weights from this repo:\n"
                         f"model = timm.create_model('{arch}', pretrained=True{kwargs_py},\n"
                         f"                          pretrained_cfg_overlay=dict(hf_hub_id='{repo_id}', "
                         f"num_classes={num_classes}))\n")
    lines = [
        '---', card_data.to_yaml(), '---',
        f'# Model card for {repo_id}', '',
        (f'A PReLU-net (`{arch}`, He et al., "Delving Deep into Rectifiers", ICCV 2015)' if prelu
         else f'A timm `{arch}` (not a PReLU-net)')
        + (f' trained with timm\'s `train.py`{f" on {dataset}" if dataset else ""}' if ckpt is not None else '')
        + f' and published with {_linked("timm-prelu", project_url())}.', '',
        '## Model Details', '',
        f'- **Architecture:** `{arch}` with `{format_kwargs(model_args)}`',
        f'- **Classes:** {num_classes}' + (f' ({", ".join(map(str, label_names[:10]))}'
                                            f'{", ..." if num_classes > 10 else ""})' if label_names else ''),
        f'- **Params (M):** {params / 1e6:.3f}',
        f'- **GMACs:** {macs / 1e9:.4g} at {input_size[1]}x{input_size[2]}',
        f'- **Image size:** {input_size[1]} x {input_size[2]} (crop_pct {data_cfg.get("crop_pct")}, '
        f'{data_cfg.get("interpolation")}; mean {_fmt_floats(data_cfg.get("mean"))}, '
        f'std {_fmt_floats(data_cfg.get("std"))})',
        (f'- **Weights:** {"EMA weights of " if ckpt.ema else ""}`{ckpt.path.name}`'
         + (f', epoch {ckpt.epoch}' if ckpt.epoch is not None else '') if ckpt is not None else
         f'- **Weights:** {weights_from or "as loaded"}'),
        f'- **Dataset:** {dataset or "not recorded"}',
        *(['- **Paper:** [Delving Deep into Rectifiers](https://arxiv.org/abs/1502.01852)'] if prelu else []),
        '- **Files:** `config.json`, `model.safetensors`' + (', `model.onnx`' if has_onnx else ''),
    ]
    if metrics:
        lines += ['', '## Evaluation', '',
                  f'As recorded by train.py on the {split} split at this checkpoint\'s epoch:', '',
                  '| metric | value |', '|---|---|']
        lines += [f'| {k} | {v:.4g} |' for k, v in metrics.items()]
    elif args.get('model_ema') and ckpt is not None and not ckpt.ema:
        lines += ['', '## Evaluation', '', 'train.py recorded metrics of the EMA weights only; '
                  'these are the non-EMA weights (publish with `--ema` to report them).']
    recipe = [(k, args[k]) for k in RECIPE_ARGS if _recipe_value_matters(k, args)]
    if recipe:
        lines += ['', '## Training recipe', '', 'timm `train.py` arguments of the run:', '',
                  '| argument | value |', '|---|---|']
        lines += [f'| `--{k.replace("_", "-")}` | `{v}` |' for k, v in recipe]
    lines += [
        '', '## How to use', '',
        ('`import timm_prelu` registers the PReLU-nets in timm; everything else is plain timm.' if prelu else
         f'`{arch}` is one of timm\'s own models; `import timm_prelu` is not needed to load it.'), '',
        '```python',
        'import timm',
        *(['import timm_prelu  # registers prelu_model_a/b/c'] if prelu else []),
        '',
        '# 1. from the Hub: config.json tells timm the architecture and its arguments',
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True)",
        registry_line.rstrip('\n'),
        '',
        f'# 3. from a local copy (`hf download {repo_id} --local-dir {tag_name}`):',
        f"model = timm.create_model('local-dir:{tag_name}', pretrained=True)",
        f"model = timm.create_model('{arch}', pretrained=True{kwargs_py},",
        f"                          pretrained_cfg_overlay=dict(file='{tag_name}/model.safetensors', "
        f"num_classes={num_classes}))",
        '',
        'model = model.eval()',
        'data_config = timm.data.resolve_model_data_config(model)',
        'transform = timm.data.create_transform(**data_config, is_training=False)',
        '# logits = model(transform(image).unsqueeze(0))',
        '```',
    ]
    if has_onnx:
        lines += ['', '`model.onnx` (dynamic batch, height and width) runs with ONNX Runtime:', '', '```python',
                  'import onnxruntime', "session = onnxruntime.InferenceSession('model.onnx')",
                  'logits, = session.run(None, {session.get_inputs()[0].name: batch})  # float32 NCHW, normalized',
                  '```']
    lines += ['', '## Citation', '', *(['```bibtex', PAPER_BIBTEX, '```', ''] if prelu else []),
              '```bibtex', TIMM_BIBTEX, '```',
              '', '## License', '', f'The weights are released under `{license}`.', '']
    return '\n'.join(lines)


def _recipe_value_matters(key: str, args: Dict[str, Any]) -> bool:
    """Hide unset arguments and settings of features the run did not use."""
    value = args.get(key)
    if value in (None, '', [], False) or (key == 'grad_accum_steps' and value == 1):
        return False
    if key == 'patience_epochs':
        return args.get('sched') == 'plateau'
    if key == 'decay_rate':
        return args.get('sched') in ('step', 'multistep', 'plateau')
    switch = {'model_ema_decay': 'model_ema', 'amp_dtype': 'amp', 'warmup_lr': 'warmup_epochs'}.get(key)
    return switch is None or bool(args.get(switch))


def _fmt_floats(values: Optional[Sequence[float]]) -> str:
    return '(' + ', '.join(f'{v:.3f}' for v in values) + ')' if values else 'n/a'


def project_url() -> Optional[str]:
    """The source repository in the installed package's metadata (pyproject's [project.urls]), if recorded."""
    from importlib.metadata import PackageNotFoundError, metadata
    try:
        urls = metadata('timm-prelu').get_all('Project-URL') or []
    except PackageNotFoundError:
        return None
    found = {}
    for entry in urls:
        label, _, url = entry.partition(',')
        found[label.strip().lower()] = url.strip()
    return next((found[k] for k in ('repository', 'source', 'source code', 'homepage') if found.get(k)), None)


def _linked(text: str, url: Optional[str]) -> str:
    return f'[{text}]({url})' if url else text
