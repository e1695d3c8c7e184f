"""The benchmark report: BENCHMARKS.md, one CSV per table, PNG plots and results.json, from one results dict.

Every number in the Markdown comes from a table that is also written as CSV (same rows, same order, the column
labels mapped by :data:`TABLES`), so a reader can recompute any ratio from the CSVs.
"""
import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..formatting import markdown_table
from ..outputs import save_figure
from .machine import machine_rows
from .memory import MEMORY_METHOD
from .precision import PRECISION_TABLES, precision_markdown

__all__ = ['TABLES', 'SECTIONS', 'GPU_ONLY_SECTIONS', 'write_report', 'busy_warning', 'format_value', 'render_table']

SECTIONS = ('activation', 'paths', 'dense', 'protocol', 'ort_gap', 'scaling', 'eval', 'precision', 'train')
GPU_ONLY_SECTIONS = ('train',)

# table key -> (CSV file, [(row key, Markdown column label)])
TABLES: Dict[str, Tuple[str, List[Tuple[str, str]]]] = {
    'summary': ('summary.csv', [('figure', 'figure'), ('value', 'value'), ('unit', 'unit'), ('detail', 'detail')]),
    'peak': ('matmul_peak.csv', [
        ('when', 'when'), ('kernel', 'kernel'), ('n', 'matrix side'), ('precision', 'precision'), ('repeats', 'repeats'),
        ('median_ms', 'median (ms)'), ('q1_ms', 'q1 (ms)'), ('q3_ms', 'q3 (ms)'), ('gflops', 'GFLOP/s (median)'),
        ('gflops_best', 'GFLOP/s (best)'), ('used_as_peak', 'used as the peak')]),
    'activation': ('activation_cost.csv', [
        ('target', 'what'), ('mode', 'pass'), ('batch', 'batch'), ('act', 'rectifier'), ('n', 'repeats'),
        ('median_ms', 'median (ms)'), ('q1_ms', 'q1 (ms)'), ('q3_ms', 'q3 (ms)'), ('iqr_pct', 'IQR (%)'),
        ('ratio_vs_relu', 'time / ReLU time')]),
    'paths': ('inference_paths.csv', [
        ('model', 'model'), ('img_size', 'size'), ('batch', 'batch'), ('path', 'path'), ('status', 'status'),
        ('n', 'repeats'), ('median_ms', 'latency, median (ms)'), ('iqr_pct', 'IQR (%)'),
        ('images_per_s', 'images/s'), ('setup_s', 'first call (s)'), ('peak_mib', 'peak memory (MiB)'),
        ('weights_mib', 'weights (MiB)'), ('max_abs_diff', 'max abs diff vs eager')]),
    'efficiency': ('efficiency.csv', [
        ('model', 'model'), ('img_size', 'size'), ('batch', 'batch'), ('path', 'path'),
        ('gflop_per_image', 'GFLOP / image'), ('median_ms', 'latency, median (ms)'),
        ('achieved_gflops', 'achieved GFLOP/s'), ('peak_gflops', 'matmul peak GFLOP/s'),
        ('fraction_of_peak', 'fraction of peak')]),
    'dense': ('dense_vs_crops.csv', [
        ('scale', 'scale'), ('map', 'feature map'), ('windows', 'views'), ('n', 'repeats'),
        ('dense_median_ms', 'dense, median (ms)'), ('dense_q1_ms', 'dense q1'), ('dense_q3_ms', 'dense q3'),
        ('naive_median_ms', 'naive crops, median (ms)'), ('naive_q1_ms', 'naive q1'), ('naive_q3_ms', 'naive q3'),
        ('speedup', 'speed-up'), ('mac_ratio', 'multiply-add ratio')]),
    'dense_checks': ('dense_checks.csv', [
        ('scale', 'scale'), ('windows', 'views'),
        ('featmap_crop_max_abs_diff', '(a) max abs diff: head on map windows cut out one by one'),
        ('context_crop_max_abs_diff', '(a) max abs diff: image crops with the full receptive field'),
        ('context_crops_checked', '(a) such crops checked'),
        ('predictor_max_abs_diff', '(a) max abs diff: MultiScalePredictor averaged scores'),
        ('mean_abs_logit', 'mean abs logit'), ('naive_mean_abs_logit_diff', '(b) naive crops: mean abs logit diff'),
        ('naive_top1_agreement_pct', '(b) same top-1 per view (%)'),
        ('naive_avg_prob_max_abs_diff', '(b) max abs diff of averaged scores'),
        ('avg_top1_same', '(b) same averaged top-1')]),
    'protocol': ('protocol_graph.csv', [
        ('protocol', 'views'), ('scale', 'scale'), ('image', 'image'), ('n', 'repeats'),
        ('graph_median_ms', 'protocol graph, median (ms)'), ('graph_q1_ms', 'graph q1'), ('graph_q3_ms', 'graph q3'),
        ('python_median_ms', 'split graphs + Python, median (ms)'), ('python_q1_ms', 'Python q1'),
        ('python_q3_ms', 'Python q3'), ('speedup', 'speed-up'), ('max_abs_diff', 'max abs diff of probs'),
        ('same_top1', 'same top-1')]),
    'protocol_heads': ('dense_heads.csv', [
        ('scale', 'scale'), ('map', 'feature map'), ('windows', 'windows'), ('n', 'repeats'),
        ('conv_median_ms', 'fully convolutional, median (ms)'), ('conv_q1_ms', 'conv q1'), ('conv_q3_ms', 'conv q3'),
        ('batched_median_ms', 'window-batched, median (ms)'), ('batched_q1_ms', 'batched q1'),
        ('batched_q3_ms', 'batched q3'), ('speedup', 'speed-up'), ('max_abs_diff', 'max abs diff of logits')]),
    'scaling': ('scaling.csv', [
        ('sweep', 'sweep'), ('img_size', 'size'), ('batch', 'batch'), ('pixels', 'pixels'), ('n', 'repeats'),
        ('median_ms', 'median (ms)'), ('q1_ms', 'q1 (ms)'), ('q3_ms', 'q3 (ms)'), ('gmacs', 'GMACs'),
        ('peak_mib', 'peak memory (MiB)')]),
    'scaling_fits': ('scaling_fits.csv', [
        ('sweep', 'sweep'), ('quantity', 'quantity'), ('against', 'against'), ('exponent', 'fitted exponent'),
        ('r2', 'R^2'), ('points', 'points')]),
    'eval_scaling': ('eval_scaling.csv', [
        ('processes', 'processes'), ('threads', 'threads per process'), ('per_rank', 'images per rank'),
        ('n', 'launches'), ('median_s', 'eval time, median (s)'), ('images', 'images'),
        ('images_per_s', 'images/s'), ('speedup', 'speed-up'), ('same_table', 'same error table')]),
    'ort_gap': ('ort_gap.csv', [
        ('graph', 'graph'), ('img_size', 'size'), ('batch', 'batch'), ('threads', 'threads'), ('n', 'repeats'),
        ('gmacs', 'GMACs'), ('median_ms', 'median (ms)'), ('iqr_pct', 'IQR (%)'), ('gflops', 'GFLOP/s'),
        ('time_vs_peer', 'time / peer'), ('reorders', 'reorders in ORT graph'), ('prelu_nodes', 'PRelu nodes'),
        ('max_abs_diff', 'max abs diff vs PyTorch')]),
    'ort_gap_ops': ('ort_gap_ops.csv', [
        ('graph', 'graph'), ('kind', 'op kind'), ('ms', 'ms per run'), ('share_pct', 'share (%)')]),
    'train': ('train_throughput.csv', [
        ('model', 'model'), ('img_size', 'size'), ('batch', 'batch'), ('flags', 'train.py flags'),
        ('log_lines', 'log lines'), ('images_per_s', 'images/s, median'), ('min_images_per_s', 'min'),
        ('max_images_per_s', 'max')]),
    **PRECISION_TABLES,
}


def format_value(value: Any) -> str:
    """How a cell is shown in Markdown: 4 significant digits for floats, blank for missing."""
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, float):
        if math.isnan(value):
            return 'nan'
        return f'{value:.4g}'
    return str(value).replace('|', '/')


def render_table(key: str, rows: Sequence[Dict]) -> str:
    """A Markdown table of ``rows`` with the columns of ``TABLES[key]``, preceded by a marker naming its CSV."""
    csv_name, columns = TABLES[key]
    table = markdown_table([label for _, label in columns],
                           [[format_value(row.get(k)) for k, _ in columns] for row in rows])
    return f'<!-- table: {key} ({csv_name}) -->\n{table}'


def _write_csv(path: Path, rows: Sequence[Dict], columns: Sequence[str]) -> None:
    keys = list(columns) + [k for row in rows for k in row if k not in columns]
    keys = list(dict.fromkeys(keys))
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: '' if row.get(k) is None else row.get(k) for k in keys})


# ---------------------------------------------------------------------------------------------------------------
# Plots


def _plots(results: Dict, out: Path) -> Dict[str, str]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    made = {}
    sections = results['sections']

    act = sections.get('activation')
    if act:
        rows = [r for r in act['rows'] if r['act'] != 'relu']
        groups = list(dict.fromkeys((r['target'], r['mode']) for r in rows))
        acts = list(dict.fromkeys(r['act'] for r in rows))
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(acts)
        for k, name in enumerate(acts):
            vals = [next(r['ratio_vs_relu'] for r in rows if (r['target'], r['mode']) == g and r['act'] == name)
                    for g in groups]
            ax.bar([i + (k - (len(acts) - 1) / 2) * width for i in range(len(groups))], vals, width, label=name)
        ax.axhline(1.0, color='k', lw=0.8)
        ax.axhline(1.05, color='r', ls='--', lw=0.8, label='goal: +5%')
        ax.set_xticks(range(len(groups)), [f'{t}\n{m}' for t, m in groups], fontsize=7)
        ax.set_ylabel('time / ReLU time')
        ax.set_ylim(min(0.9, ax.get_ylim()[0]), max(1.15, ax.get_ylim()[1]))
        ax.legend(fontsize=7)
        ax.set_title('PReLU cost relative to ReLU (median of interleaved repeats)', fontsize=9)
        made['activation'] = _save(fig, out / 'activation_cost.png')

    paths = sections.get('paths')
    if paths and sections.get('efficiency', {}).get('rows'):
        eff = sections['efficiency']['rows']
        configs = list(dict.fromkeys((r['model'], r['img_size'], r['batch']) for r in eff))
        names = list(dict.fromkeys(r['path'] for r in eff))
        for key, ylabel, fname, log in (('images_per_s', 'images/s', 'inference_paths.png', True),
                                        ('fraction_of_peak', 'fraction of matmul peak', 'efficiency.png', False)):
            src = paths['rows'] if key == 'images_per_s' else eff
            fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(configs)), 3.8))
            width = 0.8 / max(1, len(names))
            for k, name in enumerate(names):
                xs, ys = [], []
                for i, c in enumerate(configs):
                    r = next((r for r in src if (r['model'], r['img_size'], r['batch']) == c and r['path'] == name
                              and r.get(key) is not None), None)
                    if r is not None:
                        xs.append(i + (k - (len(names) - 1) / 2) * width)
                        ys.append(r[key])
                ax.bar(xs, ys, width, label=name)
            ax.set_xticks(range(len(configs)), [f'{m}\n{s}px b{b}' for m, s, b in configs], fontsize=7)
            ax.set_ylabel(ylabel)
            if log:
                ax.set_yscale('log')
            ax.legend(fontsize=7)
            ax.set_title(f'{ylabel} per inference path ({results["device"]})', fontsize=9)
            made['paths' if key == 'images_per_s' else 'efficiency'] = _save(fig, out / fname)

    dense = sections.get('dense')
    if dense:
        rows = dense['rows']
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r['dense_median_ms'] for r in rows], 0.4, label='dense (paper)')
        bars = ax.bar([x + 0.2 for x in xs], [r['naive_median_ms'] for r in rows], 0.4, label='naive crops')
        ax.bar_label(bars, [f'{r["speedup"]:.1f}x slower' for r in rows], fontsize=7)
        ax.set_xticks(list(xs), [f's={r["scale"]}\n{r["windows"]} views' for r in rows], fontsize=8)
        ax.set_ylabel('ms per image and scale (median)')
        ax.legend(fontsize=7)
        ax.set_title('Dense multi-view vs naive crops', fontsize=9)
        made['dense'] = _save(fig, out / 'dense_vs_crops.png')

    scaling = sections.get('scaling')
    if scaling:
        fits = {(f['sweep'], f['quantity']): f for f in scaling['fits']}
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, sweep, against, xlabel in ((axes[0], 'scale', 'pixels', 'pixels per image'),
                                           (axes[1], 'batch', 'batch', 'batch')):
            part = [r for r in scaling['rows'] if r['sweep'] == sweep]
            x = [r[against] for r in part]
            f = fits.get((sweep, 'time'))
            ax.loglog(x, [r['median_ms'] for r in part], 'o-',
                      label='time (ms)' + (f', exponent {f["exponent"]:.2f}' if f else ''))
            if all(r['peak_mib'] for r in part):
                f = fits.get((sweep, 'peak memory'))
                ax.loglog(x, [r['peak_mib'] for r in part], 's--',
                          label='peak memory (MiB)' + (f', exponent {f["exponent"]:.2f}' if f else ''))
            ax.set_xlabel(xlabel)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(x, [f'{v:g}' for v in x], fontsize=7)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
            ax.tick_params(axis='y', which='both', labelsize=7)
            ax.legend(fontsize=7)
            ax.set_title(f'vs {sweep}', fontsize=9)
        fig.suptitle('Scaling of eager inference (log-log)', fontsize=9)
        made['scaling'] = _save(fig, out / 'scaling.png')
    return made


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    return save_figure(fig, path).name


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def _gpu_lines(results: Dict, tables: Dict[str, List[Dict]]) -> List[str]:
    if results['device'] != 'cpu':
        lines = [f'Measured on {results["machine"]["gpu"]}: sections 1-5 above ran on device '
                 f'`{results["device"]}`.', '']
        if 'train' in tables:
            lines += ['Upstream timm `train.py` training throughput (digits upsampled to the input size, 2 short '
                      'epochs, median of the images/s train.py logs after its first log line):', '',
                      render_table('train', tables['train'])]
        else:
            lines += ['timm train.py throughput: not run (section "train" not selected).']
        return lines
    if results['machine'].get('gpu', 'none') != 'none':
        why = 'not measured in this run: run `timm-prelu bench --device cuda`'
    else:
        why = 'not measured: no GPU lent'
    return [
        '| figure | value |', '|---|---|',
        f'| inference paths on CUDA (eager, torch.compile, ONNX Runtime CUDA fp32 / fp16) | {why} |',
        f'| fraction of the GPU matmul peak per path | {why} |',
        f'| timm train.py throughput, `--amp --channels-last`, prelu_model_a vs vgg19 | {why} |',
    ]


def busy_warning(machine: Dict) -> str:
    """A warning when other work was running as the benchmark started (1-minute load average above half the
    available cores; later readings include the benchmark's own threads)."""
    load = machine.get('load_average_at_start', [0])[0]
    cores = machine.get('cores_available') or 1
    if load > cores / 2:
        return (f'the machine was busy when the run started (1-minute load average {load:g} on {cores} cores): '
                f'other processes competed for the cores (PyTorch\'s OpenMP threads suffer most): rerun on a quiet '
                f'machine for figures to publish.')
    return ''


def _method_lines(results: Dict) -> List[str]:
    s = results['settings']
    return [
        f'- Everything below ran in one process (`{results["command"]}`), device `{results["device"]}`, '
        f'PyTorch threads fixed at {results["machine"]["torch_threads"]} (ONNX Runtime given the same number).',
        '- Alternatives that are compared (rectifiers; inference paths; dense vs crops; the sizes of a sweep) are '
        'timed in interleaved rounds, each round running every alternative once in a rotated order, after '
        'untimed warm-up; we report the median and the spread (inter-quartile range q1-q3, IQR % = (q3 - q1) / '
        'median). Ratios are ratios of medians.',
        f'- Peak memory: {MEMORY_METHOD["cuda" if results["device"] != "cpu" else "cpu"]}. It is the working '
        'memory of one call (activations, workspaces, runtime arenas), weights excluded (listed apart). For ONNX '
        'Runtime it is measured on the first run of a fresh session, when its arena grows.',
        '- FLOPs = 2 x multiply-adds counted by PyTorch\'s FlopCounterMode (convolutions and fc layers). '
        'Achieved GFLOP/s = FLOPs of the call / median time; the peak is the median GFLOP/s of a '
        f'{s["matmul_n"]} x {s["matmul_n"]} float32 matrix multiply on the same device in the same run, through '
        'the fastest of the GEMM libraries the paths use (see the next section).',
        '- Weights are random (He init): speed does not depend on their values; score differences in section 4 '
        'are those of an untrained network.',
    ]


def _sentence_activation(rows: List[Dict]) -> List[str]:
    out = []
    for target in dict.fromkeys(r['target'] for r in rows):
        parts = []
        for mode in dict.fromkeys(r['mode'] for r in rows if r['target'] == target):
            ratios = ', '.join(f'{r["act"]} {r["ratio_vs_relu"]:.3f}' for r in rows
                               if r['target'] == target and r['mode'] == mode and r['act'] != 'relu')
            parts.append(f'{mode}: {ratios}')
        out.append(f'- {target}, time / ReLU time: ' + '; '.join(parts) + '.')
    return out


def write_report(results: Dict, out: Path) -> Path:
    """Write BENCHMARKS.md, the CSVs, the plots and results.json into ``out``; returns the Markdown path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = results['sections']
    tables: Dict[str, List[Dict]] = {'summary': results['summary'], 'peak': sections['peak']['rows']}
    if 'activation' in sections:
        tables['activation'] = sections['activation']['rows']
    if 'paths' in sections:
        tables['paths'] = sections['paths']['rows']
        tables['efficiency'] = sections['efficiency']['rows']
    if 'dense' in sections:
        tables['dense'] = sections['dense']['rows']
        tables['dense_checks'] = sections['dense']['checks']
    if 'protocol' in sections:
        tables['protocol'] = sections['protocol']['rows']
        tables['protocol_heads'] = sections['protocol']['heads']
    if 'scaling' in sections:
        tables['scaling'] = sections['scaling']['rows']
        tables['scaling_fits'] = sections['scaling']['fits']
    if 'eval' in sections:
        tables['eval_scaling'] = sections['eval']['rows']
    if 'ort_gap' in sections:
        tables['ort_gap'] = sections['ort_gap']['rows']
        tables['ort_gap_ops'] = sections['ort_gap']['ops']
    if 'train' in sections:
        tables['train'] = sections['train']['rows']
    if 'precision' in sections:
        tables['precision'] = sections['precision']['rows']
    for key, rows in tables.items():
        csv_name, columns = TABLES[key]
        _write_csv(out / csv_name, rows, [k for k, _ in columns])
    plots = _plots(results, out)
    with open(out / 'results.json', 'w') as f:
        json.dump(results, f, indent=1, default=str)

    m = results['machine']
    md = ['# Benchmarks', '',
          f'Written by `{results["command"]}` on {results["started"]} in {results["duration_s"] / 60:.1f} min.']
    if results['quick']:
        md += ['', '**Quick run** (narrow models, small inputs, few repeats): it checks that every section works; '
                   'its figures are not the models\' real cost.']
    md += ['', '## Machine', '', '| | |', '|---|---|']
    md += [f'| {k} | {v} |' for k, v in machine_rows(m)]
    busy = busy_warning(m)
    if busy:
        md += ['', f'**Warning:** {busy}']
    md += ['', '## Key figures', '', render_table('summary', tables['summary'])]
    md += ['', '## How it was measured', ''] + _method_lines(results)
    md += ['', '## The practical peak: a large matrix multiply', '',
           'The same product through each GEMM library behind the paths: `torch.mm` (MKL on a CPU, cuBLAS on a '
           'GPU), on a CPU also a 1x1 convolution (oneDNN, which runs PyTorch\'s convolutions) and an ONNX '
           'Runtime `MatMul` (MLAS). MKL runs well below the machine\'s limit on AMD CPUs, so `torch.mm` alone '
           'would understate the peak. Measured at the start and at the end of the run (a drift between the two '
           'shows a machine that was not quiet); the highest median is the peak used below. A fraction of peak '
           'a little above 1 means a convolution kernel beat the libraries\' own GEMM (e.g. fused, blocked '
           'layouts); nominal FLOPs are counted, so an algorithm that skips multiplies (Winograd) also shows '
           'above 1.', '',
           render_table('peak', tables['peak'])]

    if 'activation' in tables:
        s = results['settings']['activation']
        md += ['', '## 1. PReLU vs ReLU vs channel-shared PReLU', '',
               f'Same network and input, only the rectifier differs; batch {s["batch_size"]}, '
               f'{s["img_size"]} x {s["img_size"]}. forward+backward = the training step without the optimizer '
               'update (forward in train mode, cross-entropy, backward). The paper calls the cost "negligible"; '
               'the goal here is PReLU within 5% of ReLU for the whole model. `prelu` and `prelu_shared` are the '
               'project\'s PReLU (`timm_prelu.layers.activations.PReLU`: `nn.PReLU` with a vectorised backward); '
               '`prelu_torch` is the same channel-wise PReLU with PyTorch\'s own gradient kernel (plain '
               '`nn.PReLU`), whose non-vectorised CPU backward is what the project\'s PReLU replaces.', '']
        md += _sentence_activation(tables['activation'])
        md += ['', render_table('activation', tables['activation'])]
        if 'activation' in plots:
            md += ['', f'![PReLU cost]({plots["activation"]})']

    if 'paths' in tables:
        md += ['', '## 2. Inference paths', '',
               'Latency is per call (one batch); images/s = batch / median latency. "first call" is the set-up '
               'a user waits for once: torch.compile compilation, or ONNX Runtime session start, plus the first '
               'run. "max abs diff vs eager" compares each path\'s logits with eager PyTorch on the same input.', '',
               render_table('paths', tables['paths'])]
        notes = sections['paths'].get('notes') or []
        if notes:
            md += [''] + [f'- {n}' for n in notes]
        if 'paths' in plots:
            md += ['', f'![inference paths]({plots["paths"]})']
        md += ['', '## 3. Efficiency: fraction of the machine\'s practical peak', '',
               'fraction of peak = achieved GFLOP/s / matmul peak GFLOP/s. timm\'s `vgg19` (random init, '
               'same shape of network) is the peer reference, measured the same way.', '',
               render_table('efficiency', tables['efficiency'])]
        if 'efficiency' in plots:
            md += ['', f'![efficiency]({plots["efficiency"]})']

    if 'dense' in tables:
        s = results['settings']['dense']
        md += ['', '## 4. Dense multi-view vs naive crops', '',
               f'{s["model"]}, one image, one scale at a time, no flip. Dense: convolutions once on the image, '
               'the head on every 14 x 14 window of the feature map, batched (the backend calls that '
               '`MultiScalePredictor` makes for views="dense"; its averaged scores are checked below). '
               'Naive: every window\'s 224 x 224 image region (16 px stride) cropped and run through the whole '
               f'network, {s["crop_batch"]} crops per batch. Same views; the scores differ because a crop\'s '
               'border convolutions see zero padding instead of the neighbouring pixels. Checks (a) must be '
               f'below {s["tolerance"]:g}; (b) says how much the padding changes.', '',
               render_table('dense', tables['dense']), '', render_table('dense_checks', tables['dense_checks'])]
        if 'dense' in plots:
            md += ['', f'![dense vs crops]({plots["dense"]})']

    if 'protocol' in tables:
        s = results['settings']['protocol']
        md += ['', '## 5. Protocol graph and dense heads', '',
               f'{s["model"]}, one {tables["protocol"][0]["image"]} image, one scale at a time, with flips. Time per '
               'image from the decoded image to the averaged probabilities: the protocol graph (`export-onnx '
               '--protocol`: resize, views and averaging inside ONNX Runtime) vs `MultiScalePredictor` over the '
               'backbone and head graphs (PIL resize, NumPy views, head on batches of windows). The two resize '
               'differently (see docs/onnx.md), hence the small differences of the scores.', '',
               render_table('protocol', tables['protocol']), '',
               'The dense head on the same feature map in PyTorch: fully convolutional (stride-1 max pools, 1x1 '
               'convolutions) vs the head on batches of windows cut from the map.', '',
               render_table('protocol_heads', tables['protocol_heads'])]

    if 'scaling' in tables:
        s = results['settings']['scaling']
        md += ['', '## 6. Scaling with input size and batch', '',
               f'{s["model"]}, eager PyTorch inference. Fitted exponent: least-squares slope in log-log '
               '(time ~ pixels^exponent; 1 means linear).', '',
               render_table('scaling', tables['scaling']), '', render_table('scaling_fits', tables['scaling_fits'])]
        if 'scaling' in plots:
            md += ['', f'![scaling]({plots["scaling"]})']

    if 'eval_scaling' in tables:
        s = results['settings']['eval']
        md += ['', '## 7. Eval throughput across processes', '',
               f'`timm-prelu eval`\'s evaluation (`evaluate_folder`) of {s["model"]} on one folder, by one process '
               'and by `torchrun --standalone --nproc-per-node N` (gloo), each process with cores / N threads, '
               'launches alternated. Timed from a barrier after the model is built and warmed up to the end of '
               'the gather on rank 0 (start-up excluded). speed-up = images/s / the first row\'s. Ranks share the '
               'machine\'s cores: on a busy machine a multi-threaded process loses most (its threads wait for each '
               'other).', ''] + [f'- {n}' for n in sections['eval'].get('notes', [])]
        md += ['', render_table('eval_scaling', tables['eval_scaling'])]

    if 'precision' in sections:
        md += [''] + precision_markdown(sections['precision'], render_table)
    if 'ort_gap' in tables:
        md += ['', '## 8. ONNX Runtime fp32: model A against VGG-19', '',
               'Model A as a plain PRelu graph and as `export_onnx` writes it (PReLUs and fc layers in the forms ONNX '
               'Runtime keeps in its blocked conv chain, `timm_prelu.onnx_model.graph_forms`), its ReLU twin, and '
               'the peer, interleaved in one process. Reorders: layout conversions in ORT\'s optimized graph.', '',
               render_table('ort_gap', tables['ort_gap']), '', render_table('ort_gap_ops', tables['ort_gap_ops'])]
        md += [''] + [f'- {n}' for n in sections['ort_gap'].get('notes') or []]

    md += ['', '## GPU', ''] + _gpu_lines(results, tables)
    md += ['', f'Raw data: {", ".join(TABLES[k][0] for k in tables)}, results.json.', '']
    path = out / 'BENCHMARKS.md'
    path.write_text('\n'.join(md))
    return path
