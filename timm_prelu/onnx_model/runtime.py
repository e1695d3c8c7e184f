"""Running graphs exported by :mod:`timm_prelu.onnx_export` with ONNX Runtime.

:class:`OnnxModel` builds one ``InferenceSession`` and keeps it; it reads the metadata the exporter wrote (timm's
pretrained_cfg and the model's facts) and refuses files that are corrupt or were not exported by timm-prelu.
Providers: ``'auto'`` takes CUDA when this onnxruntime has it (inputs and outputs then go through IO binding, so
a CUDA torch tensor is read in place) and CPU otherwise; ``'cuda'`` / ``'cpu'`` insist on one.

Example::

    model = OnnxModel('model.onnx')            # says which provider it uses: model.provider
    logits = model.run(images)                 # (N, 3, H, W) float32 numpy or torch -> (N, classes) numpy
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import OnnxModelError, UserError

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
            raise OnnxModelError(f"unknown provider {request!r}: choose 'auto', 'cpu' or 'cuda'")
        requested = [_PROVIDER_ALIASES[key]]
    else:
        requested = [_PROVIDER_ALIASES.get(p.lower(), p) for p in request]
    missing = [p for p in requested if p not in available]
    if missing:
        fix = ('install the GPU build (pip uninstall onnxruntime && pip install onnxruntime-gpu) and CUDA/cuDNN'
               if CUDA in missing else 'install an onnxruntime build that has it')
        raise OnnxModelError(
            f'ONNX Runtime provider {", ".join(missing)} is not installed (this onnxruntime has: '
            f'{", ".join(available)}): {fix}, or use --provider cpu / auto')
    if CUDA in requested and CPU not in requested:
        requested.append(CPU)  # ORT keeps nodes CUDA cannot run (shape ops) on the CPU
    return requested


def _parse_metadata(path: Path, props: Dict[str, str]) -> Dict[str, Any]:
    if METADATA_KEY not in props or PRETRAINED_CFG_KEY not in props:
        raise OnnxModelError(
            f'{path} has no timm-prelu metadata (keys {METADATA_KEY!r}, {PRETRAINED_CFG_KEY!r}): it was not exported '
            f'by timm-prelu; export it with `timm-prelu export-onnx MODEL -o {path.name}`')
    try:
        info = json.loads(props[METADATA_KEY])
        cfg = json.loads(props[PRETRAINED_CFG_KEY])
    except json.JSONDecodeError as e:
        raise OnnxModelError(f'{path}: timm-prelu metadata is not valid JSON ({e}): re-export the model')
    if not isinstance(info, dict) or not isinstance(cfg, dict):
        raise OnnxModelError(f'{path}: timm-prelu metadata is malformed: re-export the model')
    fmt = info.get('format')
    if fmt != METADATA_FORMAT:
        raise OnnxModelError(
            f'{path}: timm-prelu metadata format {fmt!r}, this version reads {METADATA_FORMAT}: '
            f're-export the model with this version of timm-prelu')
    if info.get('graph') not in GRAPH_KINDS:
        raise OnnxModelError(f'{path}: unknown graph kind {info.get("graph")!r} in its metadata: re-export the model')
    for k in ('mean', 'std', 'input_size', 'interpolation'):
        if k not in cfg:
            raise OnnxModelError(f'{path}: pretrained_cfg metadata lacks {k!r}: re-export the model')
    info['pretrained_cfg'] = cfg
    return info


def read_metadata(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The timm-prelu metadata of an exported graph (``pretrained_cfg`` included) without building a session."""
    import onnx
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f'{path}: no such ONNX file: check the path or export one with `timm-prelu export-onnx`')
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises several types for garbage input
        raise OnnxModelError(f'{path} is not a valid ONNX file ({type(e).__name__}): re-export it') from None
    return _parse_metadata(path, {p.key: p.value for p in proto.metadata_props})


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
                f'{self.path}: no such ONNX file: check the path or export one with `timm-prelu export-onnx`')
        self.notes: List[str] = []
        requested = select_providers(providers)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        provider_args = [(p, {'device_id': device_id}) if p == CUDA else p for p in requested]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=provider_args)
        except Exception as e:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise OnnxModelError(f'{self.path} is not a valid ONNX model for onnxruntime {ort.__version__} ({msg}): '
                                 f'it is corrupt, truncated or needs a newer onnxruntime; re-export it') from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = _parse_metadata(self.path, dict(meta))
        self.pretrained_cfg: Dict[str, Any] = self.info['pretrained_cfg']
        self.provider = self.session.get_providers()[0]
        if CUDA in requested and self.provider != CUDA:
            msg = 'the CUDA provider is installed but could not start (check the CUDA / cuDNN libraries)'
            if isinstance(providers, str) and providers.lower() == 'auto':
                self.notes.append(msg + '; running on CPU')
            else:
                raise OnnxModelError(f'{self.path}: {msg}; or use --provider cpu')
        self.device_id = device_id
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name

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
            raise ValueError(f'{self.path.name} takes an NCHW batch, got shape {tuple(shape)}')
        want_c = self.info['num_features'] if self.graph == 'head' else self.info['in_chans']
        if shape[1] != want_c:
            raise ValueError(f'{self.path.name} takes {want_c} channels, got shape {tuple(shape)}')
        min_size = 1 if self.graph == 'head' else self.info['min_input_size']
        if min(shape[2], shape[3]) < min_size:
            raise ValueError(
                f'input of {shape[2]}x{shape[3]} is too small for {self.path.name}: both sides must be at least '
                f'{min_size} (resize the image up)')

    def run(self, x: Any) -> np.ndarray:
        """Run the graph on a float32 NCHW batch (numpy or torch, CUDA tensors read in place) -> numpy."""
        is_torch = type(x).__module__.startswith('torch')
        self._check_input(tuple(x.shape))
        if self.uses_cuda:
            return self._run_io_binding(x, is_torch)
        if is_torch:
            x = x.detach().to('cpu', dtype=_torch_float32()).numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]

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


def _torch_float32():
    import torch
    return torch.float32
