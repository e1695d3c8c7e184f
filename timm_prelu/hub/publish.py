"""Former home of the Hub code; it now lives in :mod:`timm_prelu.hub.folder`, :mod:`~timm_prelu.hub.card` and
:mod:`~timm_prelu.hub.upload` (loading goes through :func:`timm_prelu.sources.resolve_model`)."""
from .card import model_card, recorded_metrics
from .folder import WEIGHTS_NAME, build_hub_folder, write_hub_folder
from .upload import push_checkpoint

__all__ = ['WEIGHTS_NAME', 'build_hub_folder', 'write_hub_folder', 'push_checkpoint', 'model_card', 'recorded_metrics']
