"""Running graphs exported by :mod:`timm_prelu.onnx_export` with ONNX Runtime.

:class:`OnnxModel` builds one ``InferenceSession`` and keeps it; it reads the metadata the exporter wrote (timm's
pretrained_cfg and the model's facts) and refuses files that are corrupt or were not exported by timm-prelu.
Providers: ``'auto'`` takes CUDA when this onnxruntime has it (inputs and outputs then go through IO binding, so
a CUDA torch tensor is read in place) and CPU otherwise; ``'cuda'`` / ``'cpu'`` insist on one.

Example::

    model = OnnxModel('model.onnx')            # says which provider it uses: model.provider
    logits = model.run(images)                 # (N, 3, H, W) float32 numpy or torch -> (N, classes) numpy
"""
import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..formatting import first_line
from ..errors import InputSizeError, OnnxModelError
from ..sources.labels import label_names_problem

__all__ = [
    'OnnxModel', 'OnnxModelError', 'select_providers', 'read_metadata', 'METADATA_KEY', 'PRETRAINED_CFG_KEY',
    'METADATA_FORMAT', 'GRAPH_KINDS',
]

# metadata_props keys written by the exporter
METADATA_KEY = 'timm_prelu'  # JSON: graph kind, model name / kwargs, source, feature geometry, versions
PRETRAINED_CFG_KEY = 'pretrained_cfg'  # JSON: timm's pretrained_cfg (mean, std, interpolation, ..., label_names)
METADATA_FORMAT = 1
GRAPH_KINDS = ('model', 'backbone', 'head')  # image->logits, image->feature map, feature windows->logits

CPU = 'CPUExecutionProvider'
CUDA = 'CUDAExecutionProvider'
_PROVIDER_ALIASES = {'cpu': CPU, 'cuda': CUDA}


def _available_providers() -> List[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


def select_providers(request: Union[str, Sequence[str]] = 'auto',
                     available: Optional[Sequence[str]] = None) -> List[str]:
    """The ONNX Runtime providers to ask for, best first.

    Args:
        request: 'auto' (CUDA if installed, else CPU), 'cpu', 'cuda', or a list of onnxruntime provider names.
        available: Providers of this onnxruntime (default: ``onnxruntime.get_available_providers()``).

    Raises:
        OnnxModelError: a requested provider is not installed.
    """
    available = list(_available_providers() if available is None else available)
    if isinstance(request, str):
        key = request.lower()
        if key == 'auto':
            return [CUDA, CPU] if CUDA in available else [CPU]
        if key not in _PROVIDER_ALIASES:
            raise OnnxModelError(f"unknown provider {request!r}: choose 'auto', 'cpu' or 'cuda'", param='providers')
        requested = [_PROVIDER_ALIASES[key]]
    else:
        requested = [_PROVIDER_ALIASES.get(p.lower(), p) for p in request]
    missing = [p for p in requested if p not in available]
    if missing:
        fix = ('install the GPU build (pip uninstall onnxruntime && pip install onnxruntime-gpu) and CUDA/cuDNN'
               if CUDA in missing else 'install an onnxruntime build that has it')
        raise OnnxModelError(
            f'ONNX Runtime provider {", ".join(missing)} is not installed (this onnxruntime has: '
            f'{", ".join(available)}): {fix}, or use providers \'cpu\' / \'auto\'', param='providers')
    if CUDA in requested and CPU not in requested:
        requested.append(CPU)  # ORT keeps nodes CUDA cannot run (shape ops) on the CPU
    return requested


_INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos')  # timm's str_to_interp_mode
MAX_INPUT_SIDE = 4096  # a training input_size (and so a centre crop, a dense window) beyond any real export


class _Bad(Exception):
    """A metadata field and what is wrong with it (turned into one OnnxModelError line)."""


def _int(value: Any, name: str, low: int = 1, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(name, f'is {value!r}, not an integer')
    if value < low or (high is not None and value > high):
        raise _Bad(name, f'is {value}, outside {low}..{high if high is not None else "inf"}')
    return value


def _numbers(value: Any, name: str, length: int, positive: bool = False) -> List[float]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise _Bad(name, f'is {value!r}: expected {length} numbers, one per input channel')
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Bad(name, f'holds {v!r}, not a finite number')
        if positive and v <= 0:
            raise _Bad(name, f'holds {v!r}: must be > 0 (inputs are divided by it)')
    return [float(v) for v in value]


def _names(value: Any, name: str, num_classes: int, unique: bool = True) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(name, 'is not a list of strings')
    if len(value) != num_classes:
        raise _Bad(name, f'has {len(value)} entries for {num_classes} classes')
    problem = label_names_problem(value, unique=unique)
    if problem:
        raise _Bad(name, f'cannot be shown as class names: {problem}')


def _check_fields(info: Dict[str, Any], cfg: Dict[str, Any]) -> None:
    """Every field the runtime and the predictor use: types, ranges, and agreement with each other."""
    num_classes = _int(info.get('num_classes'), 'num_classes')
    in_chans = _int(info.get('in_chans'), 'in_chans', high=64)
    _int(info.get('num_features'), 'num_features')
    min_size = _int(info.get('min_input_size'), 'min_input_size', high=MAX_INPUT_SIDE)
    stride = _int(info.get('feature_stride'), 'feature_stride', high=MAX_INPUT_SIDE)
    rf = info.get('receptive_field')
    if not isinstance(rf, dict):
        raise _Bad('receptive_field', f'is {rf!r}, not a mapping of size, stride and padding')
    _int(rf.get('size'), 'receptive_field.size')
    if _int(rf.get('stride'), 'receptive_field.stride') != stride:
        raise _Bad('receptive_field.stride', f'is {rf["stride"]}, but feature_stride is {stride}')
    _int(rf.get('padding'), 'receptive_field.padding', low=0)
    if not isinstance(info.get('export_id'), str):
        raise _Bad('export_id', f'is {info.get("export_id")!r}, not a string')
    split = info.get('split')
    if split is not None:
        if not isinstance(split, dict) or set(split) != {'backbone', 'head'}:
            raise _Bad('split', f'is {split!r}, not the file names of the backbone and head graphs')
        for kind, fname in split.items():
            if not isinstance(fname, str) or not fname.endswith('.onnx') or fname != os.path.basename(fname) \
                    or fname in ('.', '..') or '\\' in fname or '/' in fname:
                raise _Bad(f'split.{kind}', f'is {fname!r}, not a plain .onnx file name beside this file')
    size = cfg.get('input_size')
    if not isinstance(size, (list, tuple)) or len(size) != 3:
        raise _Bad('pretrained_cfg.input_size', f'is {size!r}, not [channels, height, width]')
    if _int(size[0], 'pretrained_cfg.input_size[0]') != in_chans:
        raise _Bad('pretrained_cfg.input_size[0]', f'is {size[0]}, but the graph takes in_chans={in_chans}')
    for side in size[1:]:
        _int(side, 'pretrained_cfg.input_size', low=min_size, high=MAX_INPUT_SIDE)
        if side < stride:
            raise _Bad('pretrained_cfg.input_size', f'is {list(size)}: smaller than one feature cell ({stride} px), '
                                                    f'so the dense window would be empty')
    _numbers(cfg.get('mean'), 'pretrained_cfg.mean', in_chans)
    _numbers(cfg.get('std'), 'pretrained_cfg.std', in_chans, positive=True)
    if cfg.get('interpolation') not in _INTERPOLATIONS:
        raise _Bad('pretrained_cfg.interpolation', f'is {cfg.get("interpolation")!r}, not one of '
                                                   f'{", ".join(_INTERPOLATIONS)}')
    if 'num_classes' in cfg and cfg['num_classes'] != num_classes:
        raise _Bad('pretrained_cfg.num_classes', f'is {cfg["num_classes"]!r}, but num_classes is {num_classes}')
    _names(cfg.get('label_names'), 'pretrained_cfg.label_names', num_classes)
    # descriptions may repeat (ImageNet-1k has two "crane"s); names may not
    _names(cfg.get('label_descriptions'), 'pretrained_cfg.label_descriptions', num_classes, unique=False)


def _check_io(info: Dict[str, Any], inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
    """The graph's declared input / output shapes against the metadata (static dimensions only)."""
    if len(inputs) != 1 or len(outputs) != 1:
        raise _Bad('graph', f'has {len(inputs)} inputs and {len(outputs)} outputs, not one of each')
    graph = info['graph']
    want_in = info['num_features'] if graph == 'head' else info['in_chans']
    checks = [('input', inputs[0], 4, 1, want_in, 'num_features' if graph == 'head' else 'in_chans')]
    if graph == 'backbone':
        checks.append(('output', outputs[0], 4, 1, info['num_features'], 'num_features'))
    else:
        checks.append(('output', outputs[0], 2, 1, info['num_classes'], 'num_classes'))
    for what, shape, rank, dim, want, name in checks:
        if shape is None:
            continue  # undeclared: checked when the graph runs
        if len(shape) != rank:
            raise _Bad('graph', f'{what} has {len(shape)} dimensions, a {graph} graph has {rank}')
        if isinstance(shape[dim], int) and shape[dim] > 0 and shape[dim] != want:
            raise _Bad(name, f'is {want}, but the graph\'s {what} has {shape[dim]}')


def _parse_metadata(path: Path, props: Dict[str, str]) -> Dict[str, Any]:
    if METADATA_KEY not in props or PRETRAINED_CFG_KEY not in props:
        raise OnnxModelError(
            f'{path} has no timm-prelu metadata (keys {METADATA_KEY!r}, {PRETRAINED_CFG_KEY!r}): it was not exported '
            f'by timm-prelu; export it with `timm-prelu export-onnx MODEL -o {path.name}`', param='path')
    try:
        info = json.loads(props[METADATA_KEY])
        cfg = json.loads(props[PRETRAINED_CFG_KEY])
    except (json.JSONDecodeError, RecursionError) as e:
        raise OnnxModelError(f'{path}: timm-prelu metadata is not valid JSON ({first_line(e)}): re-export the model',
                             param='path') from e
    if not isinstance(info, dict) or not isinstance(cfg, dict):
        raise OnnxModelError(f'{path}: timm-prelu metadata is malformed (not a JSON object): re-export the model',
                             param='path')
    fmt = info.get('format')
    if fmt != METADATA_FORMAT:
        raise OnnxModelError(
            f'{path}: timm-prelu metadata format {fmt!r}, this version reads {METADATA_FORMAT}: '
            f're-export the model with this version of timm-prelu', param='path')
    if info.get('graph') not in GRAPH_KINDS:
        raise OnnxModelError(f'{path}: unknown graph kind {info.get("graph")!r} in its metadata: re-export the model',
                             param='path')
    for k in ('mean', 'std', 'input_size', 'interpolation'):
        if k not in cfg:
            raise OnnxModelError(f'{path}: pretrained_cfg metadata lacks {k!r}: re-export the model', param='path')
    try:
        _check_fields(info, cfg)
    except _Bad as e:
        raise _metadata_error(path, e) from e
    info['pretrained_cfg'] = cfg
    return info


def _metadata_error(path: Path, bad: _Bad) -> OnnxModelError:
    field_name, what = bad.args
    return OnnxModelError(f'{path}: metadata field {field_name} {what}: the file was altered or is not from '
                          f'timm-prelu; re-export the model', param='path')


def _proto_shape(value_info: Any) -> Optional[List[Union[int, str]]]:
    if not value_info.type.HasField('tensor_type') or not value_info.type.tensor_type.HasField('shape'):
        return None
    return [d.dim_value if d.HasField('dim_value') else (d.dim_param or '?')
            for d in value_info.type.tensor_type.shape.dim]


def read_metadata(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The timm-prelu metadata of an exported graph (``pretrained_cfg`` included) without building a session.

    Raises:
        OnnxModelError: the file is missing, not ONNX, not from timm-prelu, or its metadata is inconsistent (with
            itself or with the graph's declared input / output shapes).
    """
    import onnx
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f'{path}: no such ONNX file: check the path or export one with `timm-prelu export-onnx`',
                             param='path')
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises several types for garbage input
        raise OnnxModelError(f'{path} is not a valid ONNX file ({type(e).__name__}): re-export it',
                             param='path') from e
    info = _parse_metadata(path, {p.key: p.value for p in proto.metadata_props})
    graph_inputs = {i.name for i in proto.graph.initializer}
    try:
        _check_io(info, [_proto_shape(i) for i in proto.graph.input if i.name not in graph_inputs],
                  [_proto_shape(o) for o in proto.graph.output])
    except _Bad as e:
        raise _metadata_error(path, e) from e
    return info


class OnnxModel:
    """One ONNX Runtime session over a timm-prelu graph, built once, with the graph's metadata.

    Attributes:
        path: The .onnx file.
        info: Our metadata (``graph`` kind, ``model_name``, ``num_classes``, ``source``, ...).
        pretrained_cfg: timm's pretrained_cfg of the exported model (mean, std, interpolation, input_size, ...).
        provider: The provider the session really uses, e.g. 'CPUExecutionProvider'.
        notes: Things the user should know (e.g. CUDA requested by 'auto' but not loadable).
    """

    def __init__(
            self,
            path: Union[str, os.PathLike],
            providers: Union[str, Sequence[str]] = 'auto',
            device_id: int = 0,
            threads: Optional[int] = None,
    ) -> None:
        """
        Args:
            path: An .onnx file written by ``export_onnx``.
            providers: 'auto', 'cpu', 'cuda' or a list of onnxruntime provider names (see ``select_providers``).
            device_id: CUDA device for the CUDA provider and IO binding.
            threads: Intra-op threads for the CPU provider (default: onnxruntime's choice).
        """
        import onnxruntime as ort
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(
                f'{self.path}: no such ONNX file: check the path or export one with `timm-prelu export-onnx`',
                param='path')
        self.notes: List[str] = []
        requested = select_providers(providers)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        provider_args = [(p, {'device_id': device_id}) if p == CUDA else p for p in requested]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=provider_args)
        except Exception as e:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            raise OnnxModelError(f'{self.path} is not a valid ONNX model for onnxruntime {ort.__version__} '
                                 f'({first_line(e)}): it is corrupt, truncated or needs a newer onnxruntime; '
                                 f're-export it', param='path') from e
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = _parse_metadata(self.path, dict(meta))
        self.pretrained_cfg: Dict[str, Any] = self.info['pretrained_cfg']
        self.provider = self.session.get_providers()[0]
        if CUDA in requested and self.provider != CUDA:
            msg = 'the CUDA provider is installed but could not start (check the CUDA / cuDNN libraries)'
            if isinstance(providers, str) and providers.lower() == 'auto':
                self.notes.append(msg + '; running on CPU')
            else:
                raise OnnxModelError(f'{self.path}: {msg}; or use providers=\'cpu\'', param='providers')
        self.device_id = device_id
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        try:
            _check_io(self.info, [i.shape for i in inputs], [o.shape for o in outputs])
        except _Bad as e:
            raise _metadata_error(self.path, e) from e
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        if self.graph == 'backbone':
            self._check_geometry()

    def _check_geometry(self) -> None:
        """Run the backbone once on a small input: its map must shrink by the feature stride the metadata states
        (the dense window, input_size / stride cells, depends on it)."""
        stride = self.info['feature_stride']
        side = max(self.info['min_input_size'], 4 * stride)
        out = self.run(np.zeros((1, self.info['in_chans'], side, side), np.float32))
        low, high = side // stride, -(-side // stride) + 1
        if not all(low <= n <= high for n in out.shape[2:]):
            raise OnnxModelError(
                f'{self.path}: metadata field feature_stride is {stride}, but the graph maps a {side}x{side} input to '
                f'a {out.shape[2]}x{out.shape[3]} feature map (expected {low}..{high} cells): the file was altered or '
                f'is not from timm-prelu; re-export the model', param='path')

    @property
    def graph(self) -> str:
        """'model' (image -> logits), 'backbone' (image -> feature map) or 'head' (feature windows -> logits)."""
        return self.info['graph']

    @property
    def num_classes(self) -> int:
        return int(self.info['num_classes'])

    @property
    def label_names(self) -> Optional[List[str]]:
        return self.pretrained_cfg.get('label_names')

    @property
    def uses_cuda(self) -> bool:
        return self.provider == CUDA

    def describe(self) -> str:
        import onnxruntime as ort
        return f'ONNX Runtime {ort.__version__} ({self.provider}{", IO binding" if self.uses_cuda else ""})'

    def _check_input(self, shape: Sequence[int]) -> None:
        if len(shape) != 4:
            raise InputSizeError(f'{self.path.name} takes an NCHW batch, got shape {tuple(shape)}', param='x')
        want_c = self.info['num_features'] if self.graph == 'head' else self.info['in_chans']
        if shape[1] != want_c:
            raise InputSizeError(f'{self.path.name} takes {want_c} channels, got shape {tuple(shape)}', param='x')
        min_size = 1 if self.graph == 'head' else self.info['min_input_size']
        if min(shape[2], shape[3]) < min_size:
            raise InputSizeError(
                f'input of {shape[2]}x{shape[3]} is too small for {self.path.name}: both sides must be at least '
                f'{min_size} (resize the image up)', param='x')

    def _check_output(self, y: np.ndarray, batch: int) -> np.ndarray:
        want = (self.info['num_features'],) if self.graph == 'backbone' else (self.info['num_classes'],)
        ok = y.ndim == (4 if self.graph == 'backbone' else 2) and y.shape[0] == batch and y.shape[1] == want[0]
        if not ok:
            name = 'num_features' if self.graph == 'backbone' else 'num_classes'
            raise OnnxModelError(
                f'{self.path}: the graph returned shape {tuple(y.shape)} for a batch of {batch}, but metadata field '
                f'{name} is {want[0]}: the file was altered or is not from timm-prelu; re-export the model',
                param='path')
        return y

    def run(self, x: Any) -> np.ndarray:
        """Run the graph on a float32 NCHW batch (numpy or torch, CUDA tensors read in place) -> numpy."""
        is_torch = type(x).__module__.startswith('torch')
        self._check_input(tuple(x.shape))
        try:
            if self.uses_cuda:
                return self._check_output(self._run_io_binding(x, is_torch), x.shape[0])
            if is_torch:
                x = x.detach().to('cpu', dtype=_torch_float32()).numpy()
            x = np.ascontiguousarray(x, dtype=np.float32)
            y = self.session.run([self.output_name], {self.input_name: x})[0]
        except _ort_errors() as e:  # evaluated only when something was raised
            raise OnnxModelError(f'{self.path}: onnxruntime cannot run the graph on an input of shape '
                                 f'{tuple(x.shape)} ({first_line(e)}): the file is corrupt or altered; re-export it',
                                 param='path') from e
        return self._check_output(y, x.shape[0])

    def _run_io_binding(self, x: Any, is_torch: bool) -> np.ndarray:
        import onnxruntime as ort
        binding = self.session.io_binding()
        if is_torch and x.is_cuda:
            import torch
            x = x.detach().to(dtype=torch.float32).contiguous()
            torch.cuda.current_stream(x.device).synchronize()  # ORT reads the buffer on its own stream
            binding.bind_input(self.input_name, 'cuda', x.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        else:
            if is_torch:
                x = x.detach().to('cpu', dtype=_torch_float32()).numpy()
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, dtype=np.float32), 'cuda', self.device_id)
            binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, 'cuda', self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def __repr__(self) -> str:
        return (f'OnnxModel({str(self.path)!r}, graph={self.graph!r}, model={self.info.get("model_name")!r}, '
                f'provider={self.provider!r})')


@functools.lru_cache(maxsize=None)
def _ort_errors() -> tuple:
    from onnxruntime.capi import onnxruntime_pybind11_state as state
    return tuple(getattr(state, n) for n in ('Fail', 'InvalidArgument', 'RuntimeException', 'InvalidGraph',
                                             'NotImplemented', 'EPFail') if hasattr(state, n)) + (RuntimeError,)


def _torch_float32():
    import torch
    return torch.float32
