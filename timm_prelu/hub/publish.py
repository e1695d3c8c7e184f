"""Publish trained PReLU-nets on the Hugging Face Hub in timm's own layout, and fetch them back safely.

A repo holds what timm's ``save_for_hf`` writes (``config.json`` with ``architecture``, ``num_classes``,
``model_args``, ``pretrained_cfg`` incl. ``label_names``; ``model.safetensors``), a ``README.md`` model card and,
optionally, ``model.onnx``. It is uploaded as one commit, so a failed push changes nothing on the Hub. Plain timm
loads it: ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` (after ``import timm_prelu``).

Problems a user can fix (no token, wrong repo or revision, a repo without weights, a corrupt or truncated file)
become :class:`~timm_prelu.errors.UserError` naming the fix; a corrupt file is never left in the cache.
"""
import contextlib
import csv
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch.nn as nn

from ..sources.checkpoints import TrainCheckpoint, create_model_from_checkpoint, label_names_from_args, read_checkpoint
from ..errors import UserError

__all__ = [
    'WEIGHTS_NAME', 'build_hub_folder', 'write_hub_folder', 'push_checkpoint', 'download_model', 'load_pretrained',
    'model_card', 'recorded_metrics',
]

WEIGHTS_NAME = 'model.safetensors'  # timm's HF_SAFE_WEIGHTS_NAME
ONNX_NAME = 'model.onnx'
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


# --- building the folder ------------------------------------------------------------------------------------------

def build_hub_folder(
        checkpoint: Union[str, Path],
        out_dir: Union[str, Path],
        repo_id: str,
        *,
        use_ema: bool = False,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        label_names: Optional[Sequence[str]] = None,
        dataset: Optional[str] = None,
        license: str = 'apache-2.0',
        onnx: bool = False,
        onnx_exporter: Optional[Callable[[nn.Module, Path], Any]] = None,
        overwrite: bool = False,
) -> Path:
    """Write the repo folder for ``checkpoint`` to ``out_dir`` atomically (what ``push --dry-run OUT_DIR`` does).

    The folder is assembled beside ``out_dir`` and renamed into place once complete. An existing ``out_dir`` is
    refused, unless ``overwrite`` and it is a hub folder timm-prelu wrote (see :mod:`timm_prelu.outputs`).
    """
    from ..outputs import check_destination, finished_output_dir
    check_destination(out_dir, overwrite=overwrite, inputs=[checkpoint], param='out_dir')
    ckpt, model = _load_for_hub(checkpoint, repo_id, use_ema, model_name, model_kwargs, license)
    with finished_output_dir(out_dir, overwrite=overwrite, inputs=[checkpoint], kind='hub', param='out_dir') as work:
        write_hub_folder(model, ckpt, work, repo_id, label_names=label_names, dataset=dataset, license=license,
                         onnx=onnx, onnx_exporter=onnx_exporter)
    return Path(out_dir).resolve()


def _check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(r'[\w.-]+/[\w.-]+', repo_id or '') or '--' in repo_id or '..' in repo_id:
        raise UserError(f'invalid --repo-id {repo_id!r}: use ORG/NAME (letters, digits, "-", "_", "."), '
                        f'e.g. timm-prelu/prelu_model_c.in1k')


def _load_for_hub(checkpoint: Union[str, Path], repo_id: str, use_ema: bool, model_name: Optional[str],
                  model_kwargs: Optional[Dict[str, Any]], license: str) -> Tuple[TrainCheckpoint, nn.Module]:
    """The checkpoint and its model, whose pretrained_cfg describes these weights (tag from the repo name,
    license) rather than the registry's ImageNet tag."""
    _check_repo_id(repo_id)
    ckpt = read_checkpoint(checkpoint, use_ema=use_ema)
    name = repo_id.split('/')[-1]
    overlay = {'tag': name.split('.', 1)[1] if '.' in name else None, 'license': license}
    return ckpt, create_model_from_checkpoint(ckpt, model_name, model_kwargs, pretrained_cfg_overlay=overlay)


def write_hub_folder(
        model: nn.Module,
        ckpt: TrainCheckpoint,
        folder: Union[str, Path],
        repo_id: str,
        *,
        label_names: Optional[Sequence[str]] = None,
        dataset: Optional[str] = None,
        license: str = 'apache-2.0',
        onnx: bool = False,
        onnx_exporter: Optional[Callable[[nn.Module, Path], Any]] = None,
) -> None:
    """Write config.json + model.safetensors (timm's ``save_for_hf``), README.md and optionally model.onnx."""
    from timm.models import save_for_hf
    folder = Path(folder)
    labels = list(label_names) if label_names is not None else label_names_from_args(ckpt.args)
    if labels is not None and len(labels) != model.num_classes:
        if label_names is not None:
            raise UserError(f'{len(labels)} label names given for a model with {model.num_classes} classes: '
                            f'pass one name per class, in class-index order')
        labels = None
    data_config = {k: ckpt.args[k] for k in DATA_CONFIG_ARGS if ckpt.args.get(k) not in (None, '', [])}
    model_config = {'label_names': labels} if labels else None
    save_for_hf(model, folder, model_config=model_config, safe_serialization=True, data_config=data_config or None)
    if onnx:
        exporter = onnx_exporter or _default_onnx_exporter(labels, data_config)
        exporter(model, folder / ONNX_NAME)
        if not (folder / ONNX_NAME).is_file():
            raise UserError('the ONNX exporter wrote no model.onnx: check timm_prelu.onnx_export, '
                            'or push without --onnx')
    card = model_card(model, ckpt, repo_id, dataset=dataset or _dataset_name(ckpt.args), license=license,
                      has_onnx=onnx, data_config=data_config, label_names=labels)
    (folder / 'README.md').write_text(card, encoding='utf-8')


def _default_onnx_exporter(labels: Optional[List[str]],
                           data_config: Dict[str, Any]) -> Callable[[nn.Module, Path], Any]:
    """timm_prelu.onnx_model.export, imported only when asked for (it needs the onnx extras)."""
    try:
        from ..onnx_model.export import export_onnx
    except ImportError as e:
        raise UserError(f'--onnx needs the ONNX exporter (timm_prelu.onnx_export: {e}); install the extras with '
                        f'`pip install "timm-prelu[onnx]"`, or push without --onnx') from None
    size = data_config.get('img_size') or (data_config.get('input_size') or [None])[-1]
    return lambda model, path: export_onnx(model, path, label_names=labels, input_size=size)


def _dataset_name(args: Dict[str, Any]) -> Optional[str]:
    """A public name for the training data: never the local path (only its last component)."""
    dataset = args.get('dataset')
    if dataset:
        return dataset.split('/', 1)[-1] if '/' in dataset else dataset
    data_dir = args.get('data_dir') or args.get('data')
    return Path(data_dir).name if data_dir else None


# --- the model card -----------------------------------------------------------------------------------------------

def recorded_metrics(ckpt: TrainCheckpoint) -> Dict[str, float]:
    """Eval metrics train.py recorded for the checkpoint's epoch (summary.csv next to it), e.g. top1/top5 in %.

    Empty when they do not describe these weights: train.py evaluates the EMA weights when it keeps them, so
    without ``--ema`` a ``--model-ema`` run's numbers belong to other weights.
    """
    if ckpt.epoch is None or bool(ckpt.args.get('model_ema')) != ckpt.ema:
        return {}
    summary = ckpt.path.parent / 'summary.csv'
    if not summary.is_file():
        return {'top1': ckpt.metric} if ckpt.metric is not None and ckpt.args.get('eval_metric') == 'top1' else {}
    with summary.open(newline='') as f:
        for row in csv.DictReader(f):
            if row.get('epoch') is not None and row['epoch'].strip() == str(ckpt.epoch):
                return {k[len('eval_'):]: float(v) for k, v in row.items()
                        if k and k.startswith('eval_') and v not in (None, '')}
    return {}


def model_card(
        model: nn.Module,
        ckpt: TrainCheckpoint,
        repo_id: str,
        *,
        dataset: Optional[str] = None,
        license: str = 'apache-2.0',
        has_onnx: bool = False,
        data_config: Optional[Dict[str, Any]] = None,
        label_names: Optional[Sequence[str]] = None,
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
    split = ckpt.args.get('val_split') or 'validation'
    eval_results = [
        EvalResult(task_type='image-classification', dataset_type=dataset or 'custom', dataset_name=dataset or 'custom',
                   dataset_split=split, metric_type='accuracy' if key == 'top1' else f'{key}_accuracy',
                   metric_name=f'{key.replace("top", "top-")} accuracy', metric_value=round(metrics[key], 4))
        for key in ('top1', 'top5') if key in metrics
    ]
    card_data = ModelCardData(
        library_name='timm', license=license, pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'timm-prelu', 'prelu'],
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
        f'A PReLU-net (`{arch}`, He et al., "Delving Deep into Rectifiers", ICCV 2015) trained with timm\'s '
        f'`train.py`{f" on {dataset}" if dataset else ""} and published with '
        f'[timm-prelu](https://github.com/timm-prelu/timm-prelu).', '',
        '## Model Details', '',
        f'- **Architecture:** `{arch}` with `{_fmt_kwargs(model_args)}`',
        f'- **Classes:** {num_classes}' + (f' ({", ".join(map(str, label_names[:10]))}'
                                            f'{", ..." if num_classes > 10 else ""})' if label_names else ''),
        f'- **Params (M):** {params / 1e6:.3f}',
        f'- **GMACs:** {macs / 1e9:.4g} at {input_size[1]}x{input_size[2]}',
        f'- **Image size:** {input_size[1]} x {input_size[2]} (crop_pct {data_cfg.get("crop_pct")}, '
        f'{data_cfg.get("interpolation")}; mean {_fmt_floats(data_cfg.get("mean"))}, '
        f'std {_fmt_floats(data_cfg.get("std"))})',
        f'- **Weights:** {"EMA weights of " if ckpt.ema else ""}`{ckpt.path.name}`'
        + (f', epoch {ckpt.epoch}' if ckpt.epoch is not None else ''),
        f'- **Dataset:** {dataset or "not recorded"}',
        '- **Paper:** [Delving Deep into Rectifiers](https://arxiv.org/abs/1502.01852)',
        '- **Files:** `config.json`, `model.safetensors`' + (', `model.onnx`' if has_onnx else ''),
    ]
    if metrics:
        lines += ['', '## Evaluation', '',
                  f'As recorded by train.py on the {split} split at this checkpoint\'s epoch:', '',
                  '| metric | value |', '|---|---|']
        lines += [f'| {k} | {v:.4g} |' for k, v in metrics.items()]
    elif ckpt.args.get('model_ema') and not ckpt.ema:
        lines += ['', '## Evaluation', '', 'train.py recorded metrics of the EMA weights only; '
                  'these are the non-EMA weights (publish with `--ema` to report them).']
    recipe = [(k, ckpt.args[k]) for k in RECIPE_ARGS if _recipe_value_matters(k, ckpt.args)]
    if recipe:
        lines += ['', '## Training recipe', '', 'timm `train.py` arguments of the run:', '',
                  '| argument | value |', '|---|---|']
        lines += [f'| `--{k.replace("_", "-")}` | `{v}` |' for k, v in recipe]
    lines += [
        '', '## How to use', '',
        '`import timm_prelu` registers the PReLU-nets in timm; everything else is plain timm.', '',
        '```python',
        'import timm',
        'import timm_prelu  # registers prelu_model_a/b/c',
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
    lines += ['', '## Citation', '', '```bibtex', PAPER_BIBTEX, '```', '', '```bibtex', TIMM_BIBTEX, '```',
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


def _fmt_kwargs(kwargs: Dict[str, Any]) -> str:
    return ', '.join(f'{k}={v!r}' for k, v in kwargs.items())


def _fmt_floats(values: Optional[Sequence[float]]) -> str:
    return '(' + ', '.join(f'{v:.3f}' for v in values) + ')' if values else 'n/a'


# --- talking to the Hub -------------------------------------------------------------------------------------------

def _endpoint() -> str:
    from huggingface_hub import constants
    return constants.ENDPOINT


@contextlib.contextmanager
def _hub_errors(repo_id: str, revision: Optional[str], action: str, filename: str = WEIGHTS_NAME) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line UserErrors that name the fix."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, RemoteEntryNotFoundError,
        RepositoryNotFoundError, RevisionNotFoundError)
    where = f'{repo_id}@{revision}' if revision else repo_id
    try:
        yield
    except UserError:
        raise
    except GatedRepoError:
        raise UserError(f'{repo_id} is gated: request access at {_endpoint()}/{repo_id}, then log in with '
                        f'`hf auth login` (or set HF_TOKEN)') from None
    except RepositoryNotFoundError:
        raise UserError(f'repo {repo_id} not found on {_endpoint()} (or it is private and your token cannot read '
                        f'it): check the name, or log in with `hf auth login` / HF_TOKEN as a user with access'
                        ) from None
    except RevisionNotFoundError:
        raise UserError(f'revision {revision!r} does not exist in {repo_id}: pass an existing branch, tag or commit '
                        f'(e.g. main)') from None
    except RemoteEntryNotFoundError:
        raise UserError(f'{where} has no {filename}: it was not published with `timm-prelu push` (or timm\'s '
                        f'push_to_hf_hub); publish it with `timm-prelu push CHECKPOINT --repo-id {repo_id}`') from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise UserError(f'{where} is not in the local Hugging Face cache and offline mode (HF_HUB_OFFLINE=1) '
                        f'forbids downloading it: fetch it once online (e.g. `hf download {repo_id}`) or unset '
                        f'HF_HUB_OFFLINE') from None
    except HfHubHTTPError as e:
        raise UserError(_http_message(e, repo_id, action, get_token() is not None)) from None
    except RuntimeError as e:
        if isinstance(e.__cause__, HfHubHTTPError):  # huggingface_hub wraps failed LFS uploads to the storage
            raise UserError(f'{action} {where} failed: {e} ({_first_line(e.__cause__)}); '
                            f'{_nothing_changed(action)}: run again') from None
        raise
    except (_http_error_type(), OSError) as e:
        raise UserError(f'{action} {where} failed: {_first_line(e)}; {_nothing_changed(action)}: check the '
                        f'connection to {_endpoint()} (HF_ENDPOINT) and run again') from None


def _http_error_type() -> type:
    """The HTTP library's base error (httpx2 for huggingface_hub 2.x, httpx for 1.x)."""
    try:
        from httpx2 import HTTPError
    except ImportError:
        try:
            from httpx import HTTPError
        except ImportError:
            return OSError
    return HTTPError


def _http_message(e, repo_id: str, action: str, has_token: bool) -> str:
    """What an HTTP error from the Hub API means for the user, by status and the Hub's X-Error-Message."""
    status = e.response.status_code if e.response is not None else None
    server = (e.response.headers.get('X-Error-Message') if e.response is not None else None) or ''
    if status == 401 and 'Invalid credentials' in server:
        return (f'the Hugging Face token was rejected (invalid or expired): create a new one at '
                f'{_endpoint()}/settings/tokens and log in with `hf auth login` (or set HF_TOKEN)')
    access = 'write' if action == 'pushing to' else 'read'
    if status == 401:
        if not has_token:
            return (f'{action} {repo_id} needs a Hugging Face token and none is set: log in with `hf auth login` '
                    f'using a token with {access} access (or set HF_TOKEN)')
        return (f'{action} {repo_id} was refused (401 Unauthorized): log in again with `hf auth login` using a '
                f'token with {access} access (or set HF_TOKEN)')
    if status == 403:
        return (f'your token may not write to {repo_id.split("/")[0]} ({server or "403 Forbidden"}): use a token '
                f'with write access to that namespace (`hf auth login`, or HF_TOKEN)')
    return (f'{action} {repo_id} failed: {_first_line(e)}; {_nothing_changed(action)}: check the connection to '
            f'{_endpoint()} (HF_ENDPOINT) and run again')


def _nothing_changed(action: str) -> str:
    return 'nothing was committed, the repo is unchanged' if action == 'pushing to' else 'nothing was cached'


def _first_line(e: BaseException) -> str:
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    return f'{type(e).__name__}: {text[0]}' if text else type(e).__name__


def push_checkpoint(
        checkpoint: Union[str, Path],
        repo_id: str,
        *,
        revision: Optional[str] = None,
        private: bool = False,
        token: Optional[str] = None,
        use_ema: bool = False,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        label_names: Optional[Sequence[str]] = None,
        dataset: Optional[str] = None,
        license: str = 'apache-2.0',
        onnx: bool = False,
        onnx_exporter: Optional[Callable[[nn.Module, Path], Any]] = None,
        commit_message: Optional[str] = None,
) -> str:
    """Publish ``checkpoint`` to ``repo_id`` as one commit (config, weights, card[, ONNX]); returns the commit URL.

    The repo (and a non-main ``revision`` branch) is created if needed. The folder is built completely before
    anything is sent, and ``upload_folder`` commits it atomically: on any failure the repo keeps its old state.
    """
    from huggingface_hub import HfApi
    from timm import __version__ as timm_version
    ckpt, model = _load_for_hub(checkpoint, repo_id, use_ema, model_name, model_kwargs, license)
    with tempfile.TemporaryDirectory(prefix='timm-prelu-push-') as tmp:
        write_hub_folder(model, ckpt, tmp, repo_id, label_names=label_names, dataset=dataset, license=license,
                         onnx=onnx, onnx_exporter=onnx_exporter)
        api = HfApi(token=token, library_name='timm', library_version=timm_version)
        with _hub_errors(repo_id, revision, 'pushing to'):
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision not in (None, 'main'):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=tmp, revision=revision,
                commit_message=commit_message or f'Upload {model.pretrained_cfg["architecture"]} from '
                                                 f'{ckpt.path.name} with timm-prelu',
            )
    return str(commit)


def _verify_file(path: Union[str, Path]) -> Optional[str]:
    """Why ``path`` is not a sound safetensors file (content vs. its cache blob name, then header), or None."""
    from safetensors import safe_open
    real = Path(os.path.realpath(path))
    name = real.name
    if re.fullmatch(r'[0-9a-f]{64}', name) or re.fullmatch(r'[0-9a-f]{40}', name):  # a Hub cache blob: name = etag
        data_hash = hashlib.sha256() if len(name) == 64 else hashlib.sha1(b'blob %d\0' % real.stat().st_size)
        with real.open('rb') as f:
            for chunk in iter(lambda: f.read(1 << 22), b''):
                data_hash.update(chunk)
        if data_hash.hexdigest() != name:
            return 'its content does not match the checksum the Hub gave for it'
    try:
        with safe_open(str(real), framework='pt') as f:
            f.keys()
    except Exception as e:  # SafetensorError for bad headers / files shorter than their header says
        return f'it is not a valid safetensors file ({e})'
    return None


def _evict(path: Union[str, Path]) -> None:
    """Remove a cached file (the snapshot link and the blob it points to) so the next call downloads it again."""
    real = os.path.realpath(path)
    for p in {str(path), real}:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _fetch_weights(repo_id: str, revision: Optional[str], cache_dir: Optional[Union[str, Path]],
                   token: Optional[str] = None) -> str:
    """Download (or find cached) model.safetensors of a repo; a damaged copy is removed and fetched once more."""
    from huggingface_hub import hf_hub_download
    where = f'{repo_id}@{revision}' if revision else repo_id
    for attempt in range(2):
        with _hub_errors(repo_id, revision, 'downloading'):
            path = hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir, token=token)
        problem = _verify_file(path)
        if problem is None:
            return path
        _evict(path)
        if 'checksum' not in problem:
            break  # the file itself is bad, not our copy of it: downloading again cannot help
    raise UserError(f'{WEIGHTS_NAME} of {where} is corrupt or truncated: {problem}. It was removed from the cache; '
                    f'if it keeps happening the file on the Hub is broken: publish it again with '
                    f'`timm-prelu push CHECKPOINT --repo-id {repo_id}`')


def download_model(
        repo_id: str,
        revision: Optional[str] = None,
        cache_dir: Optional[Union[str, Path]] = None,
        token: Optional[str] = None,
) -> Path:
    """Fetch a published model into the Hugging Face cache (like ``hf download``), verified; returns its folder."""
    from huggingface_hub import snapshot_download
    _fetch_weights(repo_id, revision, cache_dir, token)
    with _hub_errors(repo_id, revision, 'downloading'):
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token)
    if not (Path(folder) / 'config.json').is_file():
        raise UserError(f'{repo_id} has no config.json: it was not published with `timm-prelu push` (or timm\'s '
                        f'push_to_hf_hub); publish it with `timm-prelu push CHECKPOINT --repo-id {repo_id}`')
    return Path(folder)


def load_pretrained(model_name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, pretrained=True, **kwargs)`` with fixable problems as UserErrors.

    Hub weights (``hf-hub:ORG/NAME[@rev]`` or a pretrained tag's ``hf_hub_id``) are fetched and verified first;
    a corrupt or truncated download is removed from the cache instead of being loaded or kept.
    """
    import timm
    from timm.models import get_pretrained_cfg, parse_model_name
    source, name = parse_model_name(model_name)
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    repo = None
    if source == 'hf-hub':
        repo = name
    elif source is None and not overlay.get('file') and timm.is_model(name.split('.')[0]):
        try:
            cfg = get_pretrained_cfg(name, allow_unregistered=True)
        except RuntimeError as e:  # an unknown pretrained tag
            raise UserError(f'{e}: use a tag listed by timm.list_pretrained({name.split(".")[0] + "*"!r})') from None
        repo = overlay.get('hf_hub_id') or (cfg.hf_hub_id if cfg is not None else None)
    local = None  # a local weights file timm will read
    if overlay.get('file'):
        local = Path(overlay['file'])
    elif source == 'local-dir':
        local = Path(name) / WEIGHTS_NAME
    if local is not None and local.suffix == '.safetensors':
        problem = _verify_file(local) if local.is_file() else 'the file does not exist'
        if problem:
            raise UserError(f'cannot load {local}: {problem}: pass the model.safetensors of a published model '
                            f'(e.g. from `hf download ORG/NAME --local-dir DIR`)')
    repo_id, _, revision = (repo or '').partition('@')
    if repo_id:
        _fetch_weights(repo_id, revision or None, kwargs.get('cache_dir'))
    config_errors = (_hub_errors(repo_id, revision or None, 'downloading', 'config.json') if repo_id
                     else contextlib.nullcontext())
    try:
        with config_errors:
            return timm.create_model(model_name, pretrained=True, **kwargs)
    except RuntimeError as e:
        if 'size mismatch' in str(e) or 'Missing key' in str(e) or 'Unexpected key' in str(e):
            given = _fmt_kwargs({k: v for k, v in kwargs.items() if k != 'cache_dir'}) or 'default arguments'
            raise UserError(f'the weights do not fit {model_name} built with {given}: {_first_line(e)} '
                            f'Fix: load it as \'hf-hub:ORG/NAME\' (its config.json supplies the model arguments), or '
                            f'pass the model_args and num_classes from its config.json') from None
        raise
