"""ONNX Runtime fp32 on the CPU: model A against timm's VGG-19, with and without the export's ORT forms.

Graphs timed, interleaved in one process (same input, one batch at one size):

* model A as a plain ``PRelu`` graph (``export_onnx(..., ort_forms=False)``);
* model A as ``export_onnx`` writes it (:func:`timm_prelu.onnx_model.graph_forms.optimize_for_ort`);
* A's ReLU twin (``act='relu'``), written the same way;
* the peer (timm's ``vgg19``, random init), exported by the same dynamo exporter with dynamic height and width.

For each: median latency, GFLOP/s (2 x multiply-adds / latency), the ratio to the peer's time per round, the
layout reorders (``ReorderInput`` / ``ReorderOutput``) in ORT's optimized graph, the largest difference from PyTorch,
and where the time goes by op kind (ORT's profiler, a separate session after the timing).
"""
import collections
import gc
import json
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..inference.precision import cpu_isa
from .timer import interleaved

__all__ = ['ort_gap']

def _op_kind(op: str, node: str) -> str:
    """Where a profiled node's time goes."""
    name = node.lower()  # ORT names an NCHWc node after the output of the node it replaced
    if op in ('Gemm', 'FusedGemm', 'MatMul') or (op == 'Conv' and 'gemm' in name):
        return 'fc layers'
    if op == 'Conv':
        return 'rectifier (1x1 depthwise)' if any(k in name for k in ('/scaled', '/slope_part', '/signed')) \
            else 'conv'
    if op in ('PRelu', 'LeakyRelu', 'Relu'):
        return 'rectifier'
    if op.startswith('Reorder'):
        return 'layout reorders'
    if op == 'MaxPool':
        return 'max pool'
    return 'other (SPP masks, reshapes)'


def _session(path: Path, threads: int, optimized: Optional[Path] = None, profile: bool = False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = str(path.with_suffix('')) + '-profile'
    return ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])


def _graph_ops(path: Path) -> collections.Counter:
    import onnx
    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _profile(path: Path, feed: Dict, threads: int, runs: int) -> Dict[str, float]:
    """ms per run by op kind, from ORT's profiler (the first, warm-up run left out)."""
    session = _session(path, threads, profile=True)
    for _ in range(runs + 1):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink()
    first_run = min((e for e in events if e.get('cat') == 'Session' and e.get('name') == 'model_run'),
                    key=lambda e: e['ts'])
    warm_from = first_run['ts'] + first_run['dur']
    per_kind: Dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get('cat') == 'Node' and e.get('name', '').endswith('_kernel_time') and e['ts'] >= warm_from:
            per_kind[_op_kind(e['args'].get('op_name', ''), e['name'])] += e['dur'] / 1e3
    return {k: v / runs for k, v in per_kind.items()}


def _export_peer(model: torch.nn.Module, path: Path, img_size: int) -> None:
    """The peer through the same dynamo export as the project's graphs (dynamic batch / height / width)."""
    import onnx
    from ..onnx_model.export import _Full, _export_graph
    example = torch.randn(1, 3, img_size, img_size)
    onnx.save(_export_graph(_Full(model), example, 'image', 'logits', 32, None), str(path))


def ort_gap(
        workdir: Path,
        model: str = 'prelu_model_a',
        model_kwargs: Optional[Dict] = None,
        peer: str = 'vgg19',
        peer_kwargs: Optional[Dict] = None,
        img_size: int = 224,
        batch_size: int = 1,
        repeats: int = 5,
        budget_s: Optional[float] = None,
        threads: Optional[int] = None,
        profile_runs: int = 2,
        progress: Callable[[str], None] = lambda desc: None,
) -> Tuple[List[Dict], List[Dict], List[str]]:
    """Time model A's graphs against the peer's in ONNX Runtime (CPU, fp32); see the module docstring.

    Returns (rows, op rows, notes): one row per graph; one op row per (graph, op kind).
    """
    import onnx
    import timm
    from ..models.complexity import count_macs
    from ..onnx_model.export import export_onnx
    from ..onnx_model.graph_forms import optimize_for_ort
    from .machine import model_label

    workdir = Path(workdir)
    threads = threads or torch.get_num_threads()
    model_kwargs = dict(model_kwargs or {})
    label = model_label(model, model_kwargs)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    feed = {'image': x.numpy()}
    graphs: Dict[str, Dict] = {}

    def reference(net: torch.nn.Module) -> Dict:
        with torch.no_grad():
            return dict(ref=net(x).numpy(), gmacs=count_macs(net, (3, img_size, img_size)) / 1e9)

    progress(f'ORT gap: export {label}')
    torch.manual_seed(0)
    net = timm.create_model(model, **model_kwargs).eval()
    plain = workdir / 'a-prelu.onnx'
    export_onnx(net, plain, ort_forms=False, verify=False)
    ref = reference(net)
    del net  # full-size models are 0.5-0.7 GB each: one at a time
    graphs[f'{label}, PRelu graph'] = dict(path=plain, **ref)
    fast = workdir / 'a-ort-forms.onnx'
    onnx.save(optimize_for_ort(onnx.load(str(plain)), inplace=True), str(fast))
    graphs[f'{label}, ORT forms (export default)'] = dict(path=fast, **ref)
    gc.collect()
    torch.manual_seed(0)
    twin = timm.create_model(model, **{**model_kwargs, 'act': 'relu'}).eval()
    twin_path = workdir / 'a-relu.onnx'
    export_onnx(twin, twin_path, verify=False)
    graphs[f'{label}, ReLU twin, ORT forms'] = dict(path=twin_path, **reference(twin))
    del twin
    progress(f'ORT gap: export {peer}')
    torch.manual_seed(0)
    peer_net = timm.create_model(peer, **(peer_kwargs or {})).eval()
    peer_path = workdir / 'peer.onnx'
    _export_peer(peer_net, peer_path, img_size)
    peer_name = model_label(peer, peer_kwargs) + ' (peer)'
    graphs[peer_name] = dict(path=peer_path, **reference(peer_net))
    del peer_net

    progress('ORT gap: sessions')
    for g in graphs.values():  # ORT's optimized graphs, one at a time (a full-size one is 0.7 GB)
        optimized = g['path'].with_suffix('.ort-optimized.onnx')
        _session(g['path'], threads, optimized)
        ops = _graph_ops(optimized)
        optimized.unlink()
        g['reorders'] = ops['ReorderInput'] + ops['ReorderOutput']
        g['prelu_nodes'] = ops['PRelu']
    gc.collect()
    sessions = {name: _session(g['path'], threads) for name, g in graphs.items()}
    for name, g in graphs.items():
        g['max_abs_diff'] = float(np.abs(sessions[name].run(None, feed)[0] - g['ref']).max())

    progress('ORT gap: interleaved timing')
    stats = interleaved({name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()},
                        repeats=repeats, warmup=1, budget_s=budget_s)
    sessions.clear()
    peer_samples = stats[peer_name].samples
    rows = []
    for name, g in graphs.items():
        s = stats[name]
        ratios = [a / b for a, b in zip(s.samples, peer_samples)]
        rows.append(dict(graph=name, img_size=img_size, batch=batch_size, threads=threads, n=s.n,
                         gmacs=g['gmacs'], median_ms=s.median * 1e3, iqr_pct=s.iqr_pct,
                         gflops=2 * g['gmacs'] * batch_size / s.median,
                         time_vs_peer=statistics.median(ratios), reorders=g['reorders'], prelu_nodes=g['prelu_nodes'],
                         max_abs_diff=g['max_abs_diff']))

    progress('ORT gap: op profile')
    op_rows = []
    for name, g in graphs.items():
        per_kind = _profile(g['path'], feed, threads, profile_runs)
        total = sum(per_kind.values())
        for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
            op_rows.append(dict(graph=name, kind=kind, ms=ms, share_pct=100 * ms / total))
    try:
        import resource
        peak = f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.1f} GiB'  # KiB on Linux
    except ImportError:  # not on Windows
        peak = 'not measured'
    notes = [f'ONNX Runtime CPU provider, fp32, {threads} intra-op thread(s), batch {batch_size} at {img_size} px; '
             f'ISA flags: {", ".join(f for f, has in cpu_isa().items() if has) or "unknown"}. Timing rounds alternate the graphs; '
             '"time / peer" is the median of per-round ratios.',
             f'{peer_name}: its pre_logits (a 7x7 conv over the 512-channel map, then a 1x1 conv) counts as "conv" '
             'in the op profile; model A\'s fc layers as "fc layers".',
             f'Peak resident memory of the process so far: {peak} (four graphs in four sessions).']
    return rows, op_rows, notes
