"""The errors timm-prelu raises: one small hierarchy, each also the natural builtin.

Messages speak in library terms (parameters, files, models). ``param`` names the argument of the call that
carried the bad value (``'source'``, ``'out'``, ``'labels'``, ...); the command line maps it to the flag to change.
Causes are chained (``raise ... from e``).
"""
from typing import Optional

__all__ = [
    'TimmPreluError', 'UserError', 'ModelSourceError', 'CheckpointError', 'PretrainedMismatchError', 'HubError',
    'HubFileNotFoundError', 'OnnxModelError', 'ImageError', 'DatasetError', 'OutputError', 'TrainScriptError',
    'InputSizeError', 'ConfigError', 'TrainingError', 'RankFailedError',
]


class TimmPreluError(Exception):
    """A problem with the caller's input or environment; the message names the problem and the fix."""

    def __init__(self, message: str, *, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.param = param


UserError = TimmPreluError  # the name earlier versions raised


class ConfigError(TimmPreluError, ValueError):
    """An option or keyword argument that is malformed, unknown, or inconsistent with another."""


class ModelSourceError(TimmPreluError, ValueError):
    """A model source that names no model: unknown architecture, unreadable source string, wrong kind of file."""


class CheckpointError(TimmPreluError, ValueError):
    """A checkpoint that is corrupt, unsafe, or does not fit the model it is loaded into."""


class PretrainedMismatchError(CheckpointError):
    """Weights whose tensor names or shapes do not match the model built for them."""


class HubError(TimmPreluError, OSError):
    """A Hub repository or Hub-layout folder that cannot be read or written."""


class HubFileNotFoundError(HubError, FileNotFoundError):
    """A file a Hub-layout folder or repository must hold is missing."""


class OnnxModelError(TimmPreluError, ValueError):
    """An ONNX file that is not a graph this project exported, or whose metadata is inconsistent."""


class ImageError(TimmPreluError, ValueError):
    """An image that cannot be decoded, is too large, or is too small for the model."""


class DatasetError(TimmPreluError, ValueError):
    """An image folder that cannot be walked as an ImageFolder (missing, empty, looping, mislabelled)."""


class OutputError(TimmPreluError, OSError):
    """A destination that cannot be written: exists and is not ours, is a file where a folder goes, is read-only."""


class TrainScriptError(TimmPreluError, FileNotFoundError):
    """timm's ``train.py`` cannot be found or fetched."""


class TrainingError(TimmPreluError, RuntimeError):
    """A training run (timm's ``train.py``) that ended with an error or logged too little to use."""


class InputSizeError(TimmPreluError, ValueError):
    """An input tensor whose size or channel count the model cannot take."""


class RankFailedError(TimmPreluError, RuntimeError):
    """Another rank of a distributed run failed; its message is repeated here (its own output has the details)."""
