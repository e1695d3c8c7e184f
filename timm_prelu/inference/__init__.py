"""Multi-scale, flip and dense-view inference on PyTorch or ONNX Runtime, image loading and evaluation."""
from .evaluation import EvalResult, evaluate_folder, list_imagefolder
from .images import LoadedImage, load_image
from .predictor import DEFAULT_SCALES, VIEWS, ImageScores, MultiScalePredictor, OnnxBackend, TorchBackend

__all__ = [
    'MultiScalePredictor', 'TorchBackend', 'OnnxBackend', 'ImageScores', 'VIEWS', 'DEFAULT_SCALES',
    'EvalResult', 'evaluate_folder', 'list_imagefolder', 'LoadedImage', 'load_image',
]


def __getattr__(name: str):
    """Names of the former single module ``timm_prelu.inference`` keep working, with a warning naming their home."""
    import warnings
    from . import evaluation, images, predictor
    for module in (predictor, evaluation, images):
        if name in getattr(module, '__all__', ()):
            warnings.warn(f'timm_prelu.inference.{name} moved to {module.__name__}.{name}', FutureWarning, stacklevel=2)
            return getattr(module, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
