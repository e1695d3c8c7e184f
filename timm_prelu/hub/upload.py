"""Publishing a model on the Hugging Face Hub as one commit: the repo folder is built completely, summarised, then
uploaded with ``upload_folder``, so a failed push leaves the repo as it was."""
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch.nn as nn

from ..sources.hub import hub_errors
from .folder import check_repo_id, folder_summary, load_for_hub, write_hub_folder

__all__ = ['push_checkpoint']


def push_checkpoint(
        checkpoint: Union[str, os.PathLike],
        repo_id: str,
        *,
        revision: Optional[str] = None,
        private: bool = False,
        token: Optional[str] = None,
        use_ema: bool = False,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        label_names: Union[str, os.PathLike, Sequence[str], None] = None,
        dataset: Optional[str] = None,
        license: str = 'apache-2.0',
        onnx: bool = False,
        onnx_exporter: Optional[Callable[[nn.Module, Path], Any]] = None,
        commit_message: Optional[str] = None,
        show: Optional[Callable[[str], None]] = None,
) -> str:
    """Publish a model source (usually a train.py checkpoint) to ``repo_id`` as one commit; returns the commit URL.

    The repo (and a non-main ``revision`` branch) is created if needed. ``show`` receives the summary of what is
    uploaded (files and sizes, label names, metrics) before anything is sent.
    """
    from huggingface_hub import HfApi
    from timm import __version__ as timm_version
    check_repo_id(repo_id)
    resolved = load_for_hub(checkpoint, repo_id, use_ema=use_ema, model_name=model_name, model_kwargs=model_kwargs,
                            num_classes=num_classes, label_names=label_names, license=license)
    with tempfile.TemporaryDirectory(prefix='timm-prelu-push-') as tmp:
        write_hub_folder(resolved, tmp, repo_id, dataset=dataset, license=license, onnx=onnx,
                         onnx_exporter=onnx_exporter)
        if show is not None:
            show(f'uploading to {repo_id}' + (f'@{revision}' if revision else '') + ': '
                 + folder_summary(tmp, resolved))
        api = HfApi(token=token, library_name='timm', library_version=timm_version)
        where = Path(resolved.provenance.file).name if resolved.provenance.file else resolved.provenance.source
        with hub_errors(repo_id, revision, 'pushing to', param='repo_id'):
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision not in (None, 'main'):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=tmp, revision=revision,
                commit_message=commit_message or f'Upload {resolved.model_name} from {where} with timm-prelu',
            )
    return str(commit)
