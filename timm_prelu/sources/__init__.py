"""Where a model comes from: registered names, Hub repos, local folders, train.py checkpoints, ONNX files."""
from .checkpoints import TrainCheckpoint, read_checkpoint

__all__ = ['TrainCheckpoint', 'read_checkpoint']
