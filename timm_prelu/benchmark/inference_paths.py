"""Sections 2 and 3: one network, several runtimes; speed, memory and the fraction of the machine's peak.

Paths: PyTorch eager, ``torch.compile`` (Inductor; on CPU with ``freezing``, the setting PyTorch recommends for
inference: weights become constants and convolutions get pre-packed oneDNN kernels), and ONNX Runtime on the graph
written by :func:`timm_prelu.onnx_export.export_onnx`, in float32 and float16 (float16 weights and compute behind
float32 inputs, the export meant for GPUs; on CPU the table shows what it costs there). For every (model, image
size, batch) the paths are timed in interleaved rounds on the same input, after their first call (compilation,
session start), which is reported on its own. Each path's output is compared with eager's. A short pause
separates the timed calls, so the thread pool of one runtime, still spinning after its call, does not slow
the next runtime's call.
"""
import gc
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn

from ..formatting import first_line
from ..models.complexity import count_macs, count_params
from .memory import peak_memory_mib
from .timer import interleaved, sync_for

__all__ = ['PATHS', 'ModelSpec', 'inference_paths', 'efficiency_rows']

PATHS = ('eager', 'compile', 'onnxruntime fp32', 'onnxruntime fp16')
PAUSE_S = 0.02  # between timed calls: lets ONNX Runtime's / OpenMP's spinning worker threads go to sleep


@dataclass
class ModelSpec:
    """A network to benchmark and the (image size, batch) configurations to run it at."""
    name: str
    label: str
    configs: Sequence[Tuple[int, int]]
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class _Runner:
    call: Callable[[], Any]
    setup_s: float  # compilation / session start plus the first call
    peak_mib: Optional[float]  # None until measured
    max_abs_diff: float
    measure_memory: Optional[Callable[[], Optional[float]]] = None  # run after the timing, if given


def _first_line(e: BaseException) -> str:
    if isinstance(e, ModuleNotFoundError) and e.name in ('onnx', 'onnxruntime', 'onnxscript'):
        return f"{e.name} is not installed: pip install 'timm-prelu[onnx]' (or [gpu] for CUDA)"
    return first_line(e)


def _as_tensor(out: Any) -> torch.Tensor:
    return out.detach().float().cpu() if isinstance(out, torch.Tensor) else torch.from_numpy(out).float()


def _torch_runner(model: nn.Module, x: torch.Tensor, ref: torch.Tensor, device: str, compiled: bool) -> _Runner:
    sync = sync_for(device)
    net = model
    if compiled:
        torch._dynamo.reset()  # a fresh static-shape graph for this configuration
        options = {'freezing': True} if device == 'cpu' else None
        net = torch.compile(model, dynamic=False, options=options)

    def call() -> torch.Tensor:
        with torch.no_grad():
            return net(x)

    start = time.perf_counter()
    out = call()
    sync()
    setup_s = time.perf_counter() - start
    call()  # warm-up: the first call allocated one-off things (oneDNN primitives, compiled constants)
    # memory after the timing: measuring trims the heap, which the next few calls would pay for
    return _Runner(call, setup_s, None, float((_as_tensor(out) - ref).abs().max()),
                   measure_memory=lambda: peak_memory_mib(call, device))


def _ort_runner(onnx_path: Path, x: torch.Tensor, ref: torch.Tensor, device: str, threads: int,
                plain: bool) -> _Runner:
    """ONNX Runtime through the project's OnnxModel (or a bare session for a peer model without our metadata)."""
    sync = sync_for(device)
    start = time.perf_counter()
    if plain:
        run = _plain_session(onnx_path, device, threads)
    else:
        from ..onnx_model.runtime import OnnxModel
        run = OnnxModel(onnx_path, providers=device, threads=threads).run
    arg = x if device != 'cpu' else x.numpy()

    def call():
        return run(arg)

    holder = {}
    # ONNX Runtime keeps an arena that grows on the first run of a session and is reused after: measure that run
    peak = peak_memory_mib(lambda: holder.setdefault('out', call()), device, torch_allocations=False)
    sync()
    setup_s = time.perf_counter() - start
    return _Runner(call, setup_s, peak, float((_as_tensor(holder['out']) - ref).abs().max()))


def _plain_session(path: Path, device: str, threads: int) -> Callable:
    import numpy as np
    import onnxruntime as ort
    from ..onnx_model.runtime import select_providers
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = select_providers('cuda' if device != 'cpu' else 'cpu')  # refuses a provider that is missing
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if session.get_providers()[0] != providers[0]:
        raise RuntimeError(f'ONNX Runtime could not start {providers[0]} (it fell back to {session.get_providers()})')
    name = session.get_inputs()[0].name

    def run(x):
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
    return run


class _Float16Graph(nn.Module):
    """Half-precision compute behind float32 input and output (as export_onnx(fp16=True) writes our models)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image.half()).float()


def _is_prelu_net(model: nn.Module) -> bool:
    from ..models import PReLUNet
    return isinstance(model, PReLUNet)


def _export(model: nn.Module, spec: ModelSpec, path: Path, fp16: bool, img_size: int) -> None:
    """Write the ONNX graph: the project's exporter for PReLU-nets (dynamic batch / height / width); for a peer
    model a plain ``torch.onnx.export`` with a dynamic batch at this image size."""
    if _is_prelu_net(model):
        from ..onnx_model.export import export_onnx
        export_onnx(model, path, fp16=fp16, model_name=spec.name, verify=False)
        return
    import copy
    from torch.export import Dim
    graph = _Float16Graph(copy.deepcopy(model).half()).eval() if fp16 else model.eval()
    example = torch.randn(2, 3, img_size, img_size, device=next(model.parameters()).device)
    program = torch.onnx.export(graph, (example,), dynamo=True, verbose=False,
                                dynamic_shapes=({0: Dim('batch')},))
    program.save(str(path))


class _Exports:
    """ONNX files made on first use: one per precision for a PReLU-net, one per precision and size for a peer."""

    def __init__(self, model: nn.Module, spec: ModelSpec, folder: Path, notes: List[str]):
        self.model, self.spec, self.folder, self.notes = model, spec, folder, notes
        self.plain = not _is_prelu_net(model)
        self.files: Dict[Tuple[bool, int], Tuple[Optional[Path], str]] = {}

    def get(self, fp16: bool, img_size: int) -> Tuple[Optional[Path], str]:
        key = (fp16, img_size if self.plain else 0)
        if key not in self.files:
            suffix = ('-fp16' if fp16 else '') + (f'-{img_size}' if self.plain else '')
            file = self.folder / f'{self.spec.name}{suffix}.onnx'
            start = time.perf_counter()
            try:
                _export(self.model, self.spec, file, fp16, img_size)
                self.files[key] = (file, '')
                how = f'plain torch.onnx.export at {img_size}px' if self.plain else 'timm_prelu.onnx_model.export'
                self.notes.append(f'{self.spec.label}: ONNX export ({"fp16" if fp16 else "fp32"}, {how}) took '
                                  f'{time.perf_counter() - start:.1f} s')
            except Exception as e:  # reported in the table; the other paths still run
                self.files[key] = (None, f'export failed: {_first_line(e)}')
        return self.files[key]


def inference_paths(
        specs: Sequence[ModelSpec],
        device: str = 'cpu',
        paths: Sequence[str] = PATHS,
        repeats: int = 3,
        warmup: int = 0,
        budget_s: Optional[float] = None,
        threads: Optional[int] = None,
        workdir: Optional[Path] = None,
        on_config: Optional[Callable[[str], None]] = None,
) -> Tuple[List[Dict], List[str]]:
    """Time every path of every model at every configuration.

    Args:
        specs: The models and their (image size, batch) configurations.
        device: 'cpu' or 'cuda' (ONNX Runtime then uses its CUDA provider with IO binding).
        paths: Which of :data:`PATHS` to run.
        repeats, warmup, budget_s: Timed rounds per configuration (see :func:`timer.interleaved`). PyTorch
            paths have run twice before, ONNX Runtime once (its first run, measured for memory), so the default
            is no further warm-up.
        threads: ONNX Runtime intra-op threads (default: PyTorch's thread count, so both use the same cores).
        workdir: Where the ONNX files go (default: a temporary folder).
        on_config: Called with a description before each configuration (progress).

    Returns:
        (rows, notes): one row per (model, size, batch, path); notes on exports and failures.
    """
    threads = threads or torch.get_num_threads()
    notes: List[str] = []
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix='onnx-') as tmp:
        for spec in specs:
            model = timm.create_model(spec.name, **spec.kwargs).eval().to(device)
            weights_mib = count_params(model) * 4 / 2 ** 20
            exports = _Exports(model, spec, Path(tmp), notes)
            for img_size, batch in spec.configs:
                if on_config is not None:
                    on_config(f'{spec.label} {img_size}px batch {batch}')
                rows += _run_config(model, spec, img_size, batch, device, paths, exports, threads, repeats,
                                    warmup, budget_s, weights_mib)
            del model
            gc.collect()
    return rows, notes


def _run_config(model, spec, img_size, batch, device, paths, exports, threads, repeats, warmup, budget_s,
                weights_mib) -> List[Dict]:
    gmacs = count_macs(model, (3, img_size, img_size)) / 1e9
    gen = torch.Generator().manual_seed(img_size * 100 + batch)
    x = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device)
    with torch.no_grad():
        ref = _as_tensor(model(x))
    runners: Dict[str, _Runner] = {}
    status: Dict[str, str] = {}
    for path_name in paths:
        try:
            if path_name in ('eager', 'compile'):
                runners[path_name] = _torch_runner(model, x, ref, device, compiled=path_name == 'compile')
            else:
                file, error = exports.get(path_name.endswith('fp16'), img_size)
                if file is None:
                    status[path_name] = error
                    continue
                runners[path_name] = _ort_runner(file, x, ref, device, threads, exports.plain)
            status[path_name] = 'ok'
        except Exception as e:  # e.g. no C compiler for torch.compile, no CUDA provider: say so in the table
            status[path_name] = f'failed: {_first_line(e)}'
    stats = interleaved({p: r.call for p, r in runners.items()}, repeats=repeats, warmup=warmup,
                        budget_s=budget_s, sync=sync_for(device), pause_s=PAUSE_S) if runners else {}
    for r in runners.values():
        if r.measure_memory is not None:
            r.peak_mib = r.measure_memory()
    rows = []
    for path_name in paths:
        row = dict(model=spec.label, img_size=img_size, batch=batch, path=path_name, status=status[path_name],
                   gmacs_per_image=gmacs, weights_mib=weights_mib / (2 if path_name.endswith('fp16') else 1))
        if path_name in stats:
            s, r = stats[path_name], runners[path_name]
            row.update(n=s.n, median_ms=s.median * 1e3, q1_ms=s.q1 * 1e3, q3_ms=s.q3 * 1e3, min_ms=s.min * 1e3,
                       max_ms=s.max * 1e3, iqr_pct=s.iqr_pct, images_per_s=batch / s.median,
                       achieved_gflops=2 * gmacs * batch / s.median, setup_s=r.setup_s, peak_mib=r.peak_mib,
                       max_abs_diff=r.max_abs_diff)
        rows.append(row)
    del runners
    torch._dynamo.reset()
    gc.collect()
    return rows


def efficiency_rows(path_rows: List[Dict], peak_gflops: float) -> List[Dict]:
    """Section 3: achieved GFLOP/s (2 x multiply-adds / median time) over the matmul peak, per path."""
    out = []
    for r in path_rows:
        if 'achieved_gflops' not in r:
            continue
        out.append(dict(model=r['model'], img_size=r['img_size'], batch=r['batch'], path=r['path'],
                        gflop_per_image=2 * r['gmacs_per_image'], median_ms=r['median_ms'],
                        achieved_gflops=r['achieved_gflops'], peak_gflops=peak_gflops,
                        fraction_of_peak=r['achieved_gflops'] / peak_gflops))
    return out
