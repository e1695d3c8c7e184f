"""Multi-scale, flip and dense-view inference on PyTorch or ONNX Runtime, image loading and evaluation."""
from .evaluation import EvalResult, evaluate_folder, list_imagefolder
from .images import LoadedImage, load_image
from .predictor import DEFAULT_SCALES, VIEWS, ImageScores, MultiScalePredictor, OnnxBackend, TorchBackend

__all__ = [
    'MultiScalePredictor', 'TorchBackend', 'OnnxBackend', 'ImageScores', 'VIEWS', 'DEFAULT_SCALES',
    'EvalResult', 'evaluate_folder', 'list_imagefolder', 'LoadedImage', 'load_image',
]
