"""`timm-prelu bench`: every section in one process, then the report.

Two profiles: the full run (the paper's networks at their real size) and ``quick`` (narrow networks, small
inputs, few repeats: it exercises every section in about a minute, for CI; its figures mean nothing).
"""
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..errors import ConfigError
from .inference_paths import PATHS, ModelSpec, efficiency_rows, inference_paths
from .machine import describe_machine, model_label
from .matmul_peak import matmul_peak
from .report import GPU_ONLY_SECTIONS, SECTIONS, busy_warning, write_report

__all__ = ['run_benchmarks', 'profile_settings', 'SECTIONS']

FULL_224 = ((224, 1), (224, 8))


def profile_settings(quick: bool) -> Dict:
    """What each section runs, for the full run or the quick one."""
    if quick:
        narrow = dict(width_mult=0.125, fc_dim=64)
        return dict(
            matmul_n=512, matmul_repeats=5,
            activation=dict(model='prelu_model_a', model_kwargs=narrow, img_size=64, batch_size=1,
                            block_channels=32, block_size=16, repeats=5, budget_s=None),
            paths=dict(specs=[ModelSpec('prelu_model_a', 'A (narrow)', ((64, 2),), narrow),
                              ModelSpec('vgg11', 'vgg11 (peer, narrow head)', ((32, 1),), dict(mlp_ratio=1 / 64))],
                       repeats=3, budget_s=None),
            dense=dict(model='prelu_model_a', model_kwargs=narrow, scales=(256,), crop_batch=8, repeats=3,
                       budget_s=None),
            protocol=dict(model='prelu_model_a', model_kwargs=narrow, scales=(64,), crop_size=64, image_hw=(120, 90),
                          repeats=3),
            scaling=dict(model='prelu_model_a', model_kwargs=narrow, scales=(64, 96, 128), batches=(1, 2, 4),
                         img_size=64, repeats=3, budget_s=None),
            eval=dict(model='prelu_model_a', model_kwargs=narrow, images=12, img_size=64, scales=(64,),
                      views=('full',), processes=(1, 2), repeats=1),
            precision=dict(speed=None, accuracy=dict(model_kwargs=narrow, img_size=32, epochs=4, calibrate_count=32),
                           repeats=3, budget_s=None),
            ort_gap=dict(model='prelu_model_a', model_kwargs=narrow, peer='vgg11', peer_kwargs=dict(mlp_ratio=1 / 64),
                         img_size=64, repeats=3, budget_s=None),
        )
    return dict(
        matmul_n=4096, matmul_repeats=7,
        activation=dict(model='prelu_model_a', model_kwargs={}, img_size=224, batch_size=1,
                        block_channels=256, block_size=56, repeats=10, budget_s=20.0),
        paths=dict(specs=[ModelSpec('prelu_model_a', 'A', FULL_224 + ((480, 1),)),
                          ModelSpec('prelu_model_b', 'B', FULL_224 + ((480, 1),)),
                          ModelSpec('prelu_model_c', 'C', FULL_224 + ((480, 1),)),
                          ModelSpec('vgg19', 'vgg19 (peer)', FULL_224)],
                   repeats=3, budget_s=8.0),
        dense=dict(model='prelu_model_a', model_kwargs={}, scales=(256, 384), crop_batch=8, repeats=3,
                   budget_s=None),
        protocol=dict(model='prelu_model_a', model_kwargs={}, scales=(256, 384, 480), crop_size=None,
                      image_hw=(500, 375), repeats=3),
        scaling=dict(model='prelu_model_a', model_kwargs={}, scales=(224, 288, 352, 416, 480, 544, 640),
                     batches=(1, 2, 4, 8), img_size=224, repeats=3, budget_s=20.0),
        eval=dict(model='prelu_model_a', model_kwargs={}, images=16, img_size=256, scales=(256,), views=('full',),
                  processes=(1, 2), repeats=2),
        precision=dict(speed=dict(model='prelu_model_a', model_kwargs={}, img_size=224, batch=1, calibrate_count=32),
                       accuracy=dict(model_kwargs=dict(width_mult=0.25, fc_dim=256), img_size=32, epochs=12,
                                     calibrate_count=64), repeats=5, budget_s=30.0),
        ort_gap=dict(model='prelu_model_a', model_kwargs={}, peer='vgg19', peer_kwargs={}, img_size=224, repeats=7,
                     budget_s=60.0),
    )


class _Progress:
    """One progress bar over the run's steps; each section names the step it starts."""

    def __init__(self, total: int):
        from ..progress import progress
        self.bar = progress(total=total, unit='step', file=sys.stderr)
        self.started = False

    def __call__(self, desc: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_description_str(desc[:60])

    def close(self) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()


def _check_device(device: str) -> str:
    if device not in ('cpu', 'cuda'):
        raise ConfigError(f"unknown device {device!r}: choose 'cpu' or 'cuda'", param='device')
    if device == 'cuda' and not torch.cuda.is_available():
        raise ConfigError("device 'cuda', but PyTorch sees no CUDA device (torch.cuda.is_available() is False): run "
                          "on a machine with an NVIDIA GPU and a CUDA build of PyTorch, or use device 'cpu'",
                          param='device')
    return device


def _matmul_rows(when: str, results: Dict[str, Dict]) -> List[Dict]:
    rows = []
    for kernel, r in results.items():
        s = r['stats']
        rows.append(dict(when=when, kernel=kernel, n=r['n'], precision=r['precision'], repeats=s.n,
                         median_ms=s.median * 1e3, q1_ms=s.q1 * 1e3, q3_ms=s.q3 * 1e3, gflops=r['gflops'],
                         gflops_best=r['gflops_best']))
    return rows


def _summary(sections: Dict, peak_row: Dict) -> List[Dict]:
    """The key figures, each pointing at the CSV cell it was taken from."""
    out = [dict(figure='matmul peak', value=peak_row['gflops'], unit='GFLOP/s',
                detail=f'{peak_row["n"]}x{peak_row["n"]} float32, {peak_row["kernel"]}, median', source_table='peak',
                source_row=json.dumps({'when': peak_row['when'], 'kernel': peak_row['kernel']}),
                source_column='gflops')]
    for r in sections.get('activation', {}).get('rows', []):
        if r['act'] != 'relu' and r['target'].startswith('model'):
            out.append(dict(figure=f'{r["act"]} / relu, {r["target"]}, {r["mode"]}', value=r['ratio_vs_relu'],
                            unit='x', detail=f'batch {r["batch"]}, {r["n"]} interleaved repeats, IQR '
                                             f'{r["iqr_pct"]:.1f}%', source_table='activation',
                            source_row=json.dumps({k: r[k] for k in ('target', 'mode', 'act')}),
                            source_column='ratio_vs_relu'))
    eff = sections.get('efficiency', {}).get('rows', [])
    if eff:
        first = {}
        for r in eff:  # each model's first configuration (224 px, batch 1 in the full run)
            first.setdefault(r['model'], (r['img_size'], r['batch']))
        for r in eff:
            if (r['img_size'], r['batch']) == first[r['model']]:
                out.append(dict(figure=f'fraction of matmul peak, {r["model"]}, {r["path"]}',
                                value=r['fraction_of_peak'], unit='',
                                detail=f'{r["img_size"]} px, batch {r["batch"]}: {r["achieved_gflops"]:.3g} GFLOP/s',
                                source_table='efficiency',
                                source_row=json.dumps({k: r[k] for k in ('model', 'img_size', 'batch', 'path')}),
                                source_column='fraction_of_peak'))
    for r in sections.get('dense', {}).get('rows', []):
        out.append(dict(figure=f'dense vs naive crops speed-up, scale {r["scale"]}', value=r['speedup'], unit='x',
                        detail=f'{r["windows"]} views', source_table='dense',
                        source_row=json.dumps({'scale': r['scale']}), source_column='speedup'))
    for r in sections.get('scaling', {}).get('fits', []):
        out.append(dict(figure=f'{r["quantity"]} ~ {r["against"]}^k, fitted k', value=r['exponent'], unit='',
                        detail=f'R^2 {r["r2"]:.3f}, {r["points"]} points', source_table='scaling_fits',
                        source_row=json.dumps({k: r[k] for k in ('sweep', 'quantity')}), source_column='exponent'))
    rows = sections.get('eval', {}).get('rows', [])
    for r in rows[1:]:
        out.append(dict(figure=f'eval throughput, {r["processes"]} processes / {rows[0]["processes"]}',
                        value=r['speedup'], unit='x', detail=f'{r["threads"]} thread(s) per process, '
                                                             f'{r["images_per_s"]:.3g} images/s',
                        source_table='eval_scaling', source_row=json.dumps({'processes': r['processes']}),
                        source_column='speedup'))
    return out


def run_benchmarks(
        out: os.PathLike,
        device: str = 'cpu',
        quick: bool = False,
        sections: Sequence[str] = SECTIONS,
        threads: Optional[int] = None,
        overwrite: bool = False,
        command: Optional[str] = None,
) -> Path:
    """Run the benchmark sections and write the report into ``out``; returns the path of BENCHMARKS.md.

    Args:
        out: Output folder (BENCHMARKS.md, CSVs, PNGs, results.json); replaced as a whole on success.
        device: 'cpu' or 'cuda'.
        quick: The quick profile (narrow networks, small inputs, few repeats).
        sections: Any of 'activation', 'paths' (with section 3, efficiency), 'dense', 'protocol', 'ort_gap'
            (ONNX Runtime: model A vs vgg19), 'scaling', 'eval', 'precision', 'train'.
        threads: PyTorch (and ONNX Runtime) threads; default: PyTorch's default for this machine.
        overwrite: Replace an earlier report folder (never a folder timm-prelu did not write).
        command: The command line to print in the report.
    """
    from ..outputs import check_destination, finished_output_dir
    device = _check_device(device)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ConfigError(f'unknown section(s) {unknown}: choose from {", ".join(SECTIONS)}', param='sections')
    if device == 'cpu':
        gpu_only = [s for s in sections if s in GPU_ONLY_SECTIONS]
        if gpu_only and list(sections) != list(SECTIONS):
            raise ConfigError(f'section(s) {", ".join(gpu_only)} run on a GPU only: use device \'cuda\', or '
                              f'leave them out of the sections', param='sections')
        sections = [s for s in sections if s not in GPU_ONLY_SECTIONS]
    out = Path(out)
    check_destination(out, overwrite=overwrite)  # before any work: a report folder is replaced as a whole
    if threads is not None:
        if threads < 1:
            raise ConfigError(f'threads must be at least 1, got {threads}', param='threads')
        torch.set_num_threads(threads)
    settings = profile_settings(quick)
    machine = describe_machine(device)
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    steps = (2 + 4 * ('activation' in sections) + len(settings['dense']['scales']) * ('dense' in sections)
             + 2 * ('scaling' in sections) + ('train' in sections) + 2 * ('precision' in sections)
             + len(settings['eval']['processes']) * settings['eval']['repeats'] * ('eval' in sections)
             + 3 * len(settings['protocol']['scales']) * ('protocol' in sections)
             + 5 * ('ort_gap' in sections)
             + sum(len(s.configs) for s in settings['paths']['specs']) * ('paths' in sections))
    progress = _Progress(steps)
    results: Dict = dict(command=command or 'timm-prelu bench', device=device, quick=quick, machine=machine,
                         started=started.isoformat(timespec='seconds'), sections={})
    sec = results['sections']
    with finished_output_dir(out, overwrite=overwrite, kind='bench') as work:
        try:
            progress('matmul peak')
            peak_rows = _matmul_rows('start', matmul_peak(device, settings['matmul_n'],
                                                          repeats=settings['matmul_repeats']))

            if 'activation' in sections:
                s = settings['activation']
                from .activation_cost import activation_cost
                sec['activation'] = dict(rows=activation_cost(
                    device, s['model'], s['model_kwargs'], s['img_size'], s['batch_size'], s['block_channels'],
                    s['block_size'], repeats=s['repeats'], budget_s=s['budget_s'], progress=progress))

            if 'paths' in sections:
                s = settings['paths']
                rows, notes = inference_paths(s['specs'], device, PATHS, repeats=s['repeats'], budget_s=s['budget_s'],
                                              threads=torch.get_num_threads(), workdir=work, on_config=progress)
                sec['paths'] = dict(rows=rows, notes=notes)

            if 'dense' in sections:
                s = settings['dense']
                from .dense_vs_crops import dense_vs_crops
                timing, checks = dense_vs_crops(device, s['model'], s['model_kwargs'], s['scales'], s['crop_batch'],
                                                repeats=s['repeats'], budget_s=s['budget_s'], progress=progress)
                sec['dense'] = dict(rows=timing, checks=checks)

            if 'protocol' in sections:
                s = settings['protocol']
                from .protocol_paths import protocol_paths
                rows, heads = protocol_paths(s['model'], s['model_kwargs'], s['scales'], crop_size=s['crop_size'],
                                             image_hw=s['image_hw'], repeats=s['repeats'],
                                             threads=torch.get_num_threads(), workdir=work, progress=progress)
                sec['protocol'] = dict(rows=rows, heads=heads)

            if 'scaling' in sections:
                s = settings['scaling']
                from .scaling import scaling
                rows, fits = scaling(device, s['model'], s['model_kwargs'], s['scales'], s['batches'],
                                     img_size=s['img_size'], repeats=s['repeats'], budget_s=s['budget_s'],
                                     progress=progress)
                sec['scaling'] = dict(rows=rows, fits=fits)

            if 'eval' in sections:
                s = settings['eval']
                from .eval_scaling import eval_scaling
                with tempfile.TemporaryDirectory(dir=work, prefix='eval-') as tmp:  # the image folder
                    rows, notes = eval_scaling(Path(tmp), s['model'], s['model_kwargs'], s['images'], s['img_size'],
                                               s['scales'], s['views'], s['processes'], s['repeats'], progress)
                sec['eval'] = dict(rows=rows, notes=notes)
            if 'precision' in sections:
                from .precision import precision_section
                with tempfile.TemporaryDirectory(dir=work, prefix='precision-') as tmp:  # digits and graphs
                    sec['precision'] = precision_section(Path(tmp), threads=torch.get_num_threads(),
                                                         progress=progress, **settings['precision'])
            if 'ort_gap' in sections:
                from .ort_gap import ort_gap
                with tempfile.TemporaryDirectory(dir=work, prefix='ort-gap-') as tmp:  # four full-size graphs
                    rows, ops, notes = ort_gap(Path(tmp), threads=torch.get_num_threads(), progress=progress,
                                               **settings['ort_gap'])
                sec['ort_gap'] = dict(rows=rows, ops=ops, notes=notes)

            if 'train' in sections:
                progress('train.py throughput')
                from .train_throughput import train_throughput
                with tempfile.TemporaryDirectory(dir=work, prefix='train-') as tmp:  # data and checkpoints
                    sec['train'] = dict(rows=train_throughput(Path(tmp), device=device))

            progress('matmul peak (again)')
            peak_rows += _matmul_rows('end', matmul_peak(device, settings['matmul_n'],
                                                         repeats=settings['matmul_repeats']))
        finally:
            progress.close()
        # a busy moment or a slow library can only slow a GEMM down: the fastest is the best estimate of the peak
        peak_row = max(peak_rows, key=lambda r: r['gflops'])
        for r in peak_rows:
            r['used_as_peak'] = r is peak_row
        sec['peak'] = dict(rows=peak_rows)
        if 'paths' in sec:
            sec['efficiency'] = dict(rows=efficiency_rows(sec['paths']['rows'], peak_row['gflops']))
        results['summary'] = _summary(sec, peak_row)
        if hasattr(os, 'getloadavg'):
            machine['load_average_at_end'] = [round(v, 2) for v in os.getloadavg()]
        results['settings'] = _settings_record(settings)
        results['duration_s'] = time.perf_counter() - t0
        write_report(results, work)
    warning = busy_warning(machine)
    if warning:
        print(f'warning: {warning}', file=sys.stderr)
    return out / 'BENCHMARKS.md'


def _settings_record(settings: Dict) -> Dict:
    """The settings as plain data for the report and results.json."""
    rec = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    for key in ('activation', 'dense', 'protocol', 'ort_gap', 'scaling', 'eval'):
        rec[key] = {k: v for k, v in settings[key].items()}
        rec[key]['model'] = model_label(settings[key]['model'], settings[key]['model_kwargs'])
    from .dense_vs_crops import EXACT_TOLERANCE
    rec['dense']['tolerance'] = EXACT_TOLERANCE
    rec['precision'] = settings['precision']
    rec['paths'] = dict(repeats=settings['paths']['repeats'], budget_s=settings['paths']['budget_s'],
                        models=[dict(name=s.name, label=s.label, configs=list(s.configs), kwargs=s.kwargs)
                                for s in settings['paths']['specs']])
    return rec
