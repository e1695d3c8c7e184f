"""Publishing to the Hugging Face Hub in timm's layout: the folder, the model card, the upload."""
from .card import model_card, project_url, recorded_metrics
from .folder import WEIGHTS_NAME, build_hub_folder, folder_summary, write_hub_folder
from .upload import push_checkpoint

__all__ = ['WEIGHTS_NAME', 'build_hub_folder', 'write_hub_folder', 'folder_summary', 'push_checkpoint', 'model_card',
           'recorded_metrics', 'project_url']


_REPLACED = {
    'load_pretrained': 'timm_prelu.sources.resolve_model(source, ...).model',
    'download_model': "timm_prelu.sources.resolve_model('hf-hub:ORG/NAME').provenance.file",
}


def __getattr__(name: str):
    """Former loading functions of ``timm_prelu.hub``: loading now goes through one resolver."""
    if name in _REPLACED:
        raise AttributeError(f'timm_prelu.hub.{name} was replaced by {_REPLACED[name]}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
