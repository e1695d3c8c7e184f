"""Publishing to the Hugging Face Hub in timm's layout: the folder, the model card, the upload."""
from .card import model_card, project_url, recorded_metrics
from .folder import WEIGHTS_NAME, build_hub_folder, folder_summary, write_hub_folder
from .upload import push_checkpoint

__all__ = ['WEIGHTS_NAME', 'build_hub_folder', 'write_hub_folder', 'folder_summary', 'push_checkpoint', 'model_card',
           'recorded_metrics', 'project_url']
