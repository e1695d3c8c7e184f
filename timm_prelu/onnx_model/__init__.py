"""ONNX export of PReLU-nets and their ONNX Runtime sessions (named so it does not shadow the ``onnx`` package)."""
from .export import OnnxExport, export_onnx, split_paths
from .runtime import OnnxModel, read_metadata, select_providers

__all__ = ['export_onnx', 'OnnxExport', 'split_paths', 'OnnxModel', 'read_metadata', 'select_providers']
