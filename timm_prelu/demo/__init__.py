"""The end-to-end demo: real images -> train.py -> Hub folder -> load back -> ONNX multi-scale evaluation."""
from .pipeline import ACTS, DemoConfig, run_demo

__all__ = ['DemoConfig', 'run_demo', 'ACTS']
