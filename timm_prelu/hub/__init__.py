"""Publishing to the Hugging Face Hub in timm's layout: the folder, the model card, the upload."""
from .publish import WEIGHTS_NAME, build_hub_folder, model_card, push_checkpoint, recorded_metrics, write_hub_folder

__all__ = ['WEIGHTS_NAME', 'build_hub_folder', 'write_hub_folder', 'push_checkpoint', 'model_card', 'recorded_metrics']
