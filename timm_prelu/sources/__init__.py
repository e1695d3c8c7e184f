"""Where a model comes from: registered names, Hub repos, local folders, train.py checkpoints, ONNX files."""
from .checkpoints import TrainCheckpoint, read_checkpoint
from .labels import read_label_names
from .resolve import Provenance, ResolvedModel, is_prelu_net, model_from_checkpoint, resolve_model

__all__ = ['resolve_model', 'ResolvedModel', 'Provenance', 'read_label_names', 'TrainCheckpoint', 'read_checkpoint',
           'model_from_checkpoint', 'is_prelu_net']
