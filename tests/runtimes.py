"""Run an .onnx file in one of the runtimes the exported graphs are checked in, the same way for each.

``load(path, runtime)`` compiles or loads the graph once, keeping its dynamic axes, and returns a callable that takes
the graph's inputs (one array, or a dict by input name) and returns its first output as a numpy array. Runtimes:

* ``'onnxruntime'``: ``onnxruntime.InferenceSession`` on the CPU provider.
* ``'openvino'``: the OpenVINO CPU plugin, compiled once with dynamic shapes and an f32 inference precision hint
  (its default on CPUs with bf16 / fp16 units is reduced precision).
* ``'reference'``: ONNX's own reference evaluator, ``onnx.reference.ReferenceEvaluator`` (numpy, slow, exact spec).
"""
from pathlib import Path
from typing import Callable, Dict, Union

import numpy as np

RUNTIMES = ('onnxruntime', 'openvino', 'reference')

Inputs = Union[np.ndarray, Dict[str, np.ndarray]]


def _as_dict(inputs: Inputs, names) -> Dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        return inputs
    assert len(names) == 1, f'the graph takes {len(names)} inputs {names}: pass a dict'
    return {names[0]: inputs}


def _onnxruntime(path: Path, threads: int) -> Callable[[Inputs], np.ndarray]:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    names = [i.name for i in session.get_inputs()]
    return lambda inputs: session.run(None, _as_dict(inputs, names))[0]


def _openvino(path: Path, threads: int) -> Callable[[Inputs], np.ndarray]:
    import openvino as ov
    compiled = ov.Core().compile_model(str(path), 'CPU', {'INFERENCE_PRECISION_HINT': 'f32',
                                                          'INFERENCE_NUM_THREADS': threads})
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]
    output = compiled.output(0)

    def run(inputs: Inputs) -> np.ndarray:
        return np.array(request.infer(_as_dict(inputs, names))[output])  # a copy: the request reuses its buffers
    return run


def _reference(path: Path, threads: int) -> Callable[[Inputs], np.ndarray]:
    from onnx.reference import ReferenceEvaluator
    evaluator = ReferenceEvaluator(str(path))
    names = list(evaluator.input_names)
    return lambda inputs: evaluator.run(None, _as_dict(inputs, names))[0]


_LOADERS = {'onnxruntime': _onnxruntime, 'openvino': _openvino, 'reference': _reference}


def load(path: Union[str, Path], runtime: str, threads: int = 1) -> Callable[[Inputs], np.ndarray]:
    """The graph at ``path`` in ``runtime`` (one of ``RUNTIMES``), ready to run at any size its dynamic axes allow."""
    if runtime not in _LOADERS:
        raise ValueError(f'unknown runtime {runtime!r}: choose one of {RUNTIMES}')
    return _LOADERS[runtime](Path(path), threads)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
