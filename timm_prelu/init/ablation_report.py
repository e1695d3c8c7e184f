"""The small-model ablation's statistics and report: per-variant errors and final training loss over seeds, paired
differences with 95% t-intervals, the verdicts, the slopes beside the paper's Table 1, a plot and the files.

The variants of one seed share the data, initial weights' seed, batches, crops and dropout masks, so the gap
between two variants is read from the per-seed differences (a paired t-interval), not from the two spreads.
"""
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ConfigError
from ..outputs import save_figure, write_atomic
from .ablation import DATASETS, LAYERS, VARIANTS, AblationConfig, AblationRun, final_loss

__all__ = ['PAPER_TABLE1', 'PAPER_TABLE2', 'EQUIVALENCE_MARGIN', 'VariantSummary', 'PairedDifference', 'complete',
           'summarize',
           'paired_difference', 't_interval', 'ordering_verdict', 'equivalence_verdict', 'verdict', 'format_summary',
           'machine_line',
           'plot_ablation', 'write_ablation']

# Table 2 (top-1, top-5 error %) and Table 1 (learned slopes: channel-shared, channel-wise mean) of the paper.
PAPER_TABLE2 = {'relu': (33.82, 13.34), 'prelu_shared': (32.71, 12.87), 'prelu': (32.64, 12.75)}
PAPER_TABLE1 = {
    'prelu_shared': (0.681, 0.103, 0.099, 0.228, 0.561, 0.126, 0.089, 0.124, 0.062, 0.008, 0.210, 0.063, 0.031),
    'prelu': (0.596, 0.321, 0.204, 0.294, 0.464, 0.196, 0.152, 0.145, 0.124, 0.134, 0.198, 0.074, 0.075),
}
# Channel-shared vs channel-wise: the paper calls them comparable (0.07 points apart); the claim tested here is
# that they are within this many points of top-1 error.
EQUIVALENCE_MARGIN = 1.0


@dataclass
class VariantSummary:
    variant: str
    top1: Tuple[float, float]  # mean, sd over seeds
    top5: Tuple[float, float]
    loss: Tuple[float, float]  # final training loss
    slopes: List[float]  # per layer, mean over seeds


@dataclass
class PairedDifference:
    """Top-1 error of ``a`` minus ``b``, seed by seed (points), and its t-interval."""
    a: str
    b: str
    diffs: List[float]
    mean: float
    sd: float
    low: float
    high: float
    level: float = 0.95

    @property
    def n(self) -> int:
        return len(self.diffs)

    def __str__(self) -> str:
        return (f'{VARIANTS[self.a]} - {VARIANTS[self.b]}: {self.mean:+.2f} points (sd {self.sd:.2f} over {self.n} '
                f'paired seeds, {sum(d > 0 for d in self.diffs)} positive); {self.level:.0%} t-interval '
                f'[{self.low:+.2f}, {self.high:+.2f}] ({self.n - 1} df)')


def _mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def t_interval(values: Sequence[float], level: float = 0.95) -> Tuple[float, float, float, float]:
    """Mean, sd, and the two-sided ``level`` Student-t interval of the mean of ``values`` (at least 2)."""
    if len(values) < 2:
        raise ConfigError(f'a t-interval needs at least 2 values, got {len(values)}', param='seeds')
    from scipy.stats import t as student_t  # scipy comes with scikit-learn, which both data sets need
    mean, sd = _mean_sd(values)
    half = float(student_t.ppf(0.5 + level / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean, sd, mean - half, mean + half


def complete(runs: Sequence[AblationRun]) -> List[AblationRun]:
    """The runs of the seeds at which no variant diverged: what the statistics use."""
    diverged = {r.seed for r in runs if r.diverged_at is not None}
    return [r for r in runs if r.seed not in diverged]


def summarize(runs: Sequence[AblationRun]) -> Dict[str, VariantSummary]:
    """Mean and sd over seeds of each variant's errors and final training loss, and its mean slope per layer
    (over the seeds at which no variant diverged)."""
    runs = complete(runs)
    out = {}
    for variant in VARIANTS:
        rs = [r for r in runs if r.variant == variant]
        if rs:
            slopes = np.mean([r.slopes for r in rs], axis=0).tolist() if rs[0].slopes else []
            out[variant] = VariantSummary(variant, _mean_sd([r.top1_err for r in rs]),
                                          _mean_sd([r.top5_err for r in rs]), _mean_sd([final_loss(r) for r in rs]),
                                          slopes)
    return out


def paired_difference(runs: Sequence[AblationRun], a: str, b: str, level: float = 0.95) -> PairedDifference:
    """Top-1 error of variant ``a`` minus ``b`` at each seed both ran (and no variant diverged), with its
    t-interval."""
    by = {(r.variant, r.seed): r.top1_err for r in complete(runs)}
    seeds = sorted({s for v, s in by if v == a} & {s for v, s in by if v == b})
    diffs = [by[(a, s)] - by[(b, s)] for s in seeds]
    return PairedDifference(a, b, diffs, *t_interval(diffs, level), level=level)


def ordering_verdict(d: PairedDifference) -> str:
    """Which of ``d.a`` and ``d.b`` has the lower error, if the interval shows one."""
    if d.low > 0:
        return f'{VARIANTS[d.b]} better: the interval lies above 0'
    if d.high < 0:
        return f'{VARIANTS[d.a]} better: the interval lies below 0'
    return 'no ordering shown: the interval includes 0'


def equivalence_verdict(d: PairedDifference, margin: float = EQUIVALENCE_MARGIN) -> str:
    """Whether the interval of ``d`` lies inside [-margin, +margin] points."""
    within = f'within {margin:g} point{"s" * (margin != 1)}'
    if -margin < d.low and d.high < margin:
        return f'equivalent {within}: the interval lies inside [-{margin:g}, +{margin:g}]'
    return f'not shown equivalent {within}: the interval reaches outside [-{margin:g}, +{margin:g}]'


def _fit_line(s: Dict[str, VariantSummary], num_classes: int) -> str:
    """Whether each variant fitted its training images: its final loss against chance, ln(classes), and against
    the best variant's (a variant at over twice the best loss fits less in the same iterations)."""
    chance = math.log(num_classes)
    line = (f'Against chance (ln {num_classes} = {chance:.2f}): '
            + ', '.join(f'{VARIANTS[v]} {vs.loss[0] / chance:.0%}' for v, vs in s.items()) + '. ')
    loose = [VARIANTS[v] for v, vs in s.items() if vs.loss[0] > chance / 4]
    if loose:
        line += f'{", ".join(loose)} stay{"s" * (len(loose) == 1)} above a quarter of chance: underfitting. '
    else:
        line += 'Every variant trains (final loss below a quarter of chance). '
    best = min(s, key=lambda v: s[v].loss[0])
    slow = [v for v in s if s[v].loss[0] > 2 * s[best].loss[0]]
    if slow:
        line += ('; '.join(f'{VARIANTS[v]} ends at {s[v].loss[0] / s[best].loss[0]:.1f}x the training loss of '
                           f'{VARIANTS[best]}' for v in slow)
                 + ': fitting less in the same iterations, so its error gap is partly slower fitting in this short '
                   'schedule, not only the paper\'s effect on test error (its models trained for 75 epochs).')
    elif not loose:
        line += 'The final losses are within 2x of each other: the error gaps are not from one variant fitting less.'
    return line.rstrip()


def _slopes_line(variant: str, slopes: Sequence[float]) -> str:
    """conv1 against the deep convs and the fc layers, here and in Table 1."""
    paper = PAPER_TABLE1[variant]
    here = (slopes[0], float(np.mean(slopes[5:11])), float(np.mean(slopes[11:])))
    there = (paper[0], float(np.mean(paper[5:11])), float(np.mean(paper[11:])))
    if max(abs(a - 0.25) for a in slopes) < 0.02:
        pattern = 'every slope within 0.02 of its init 0.25 in this run: no pattern to read'
    else:
        pattern = ('conv1 above the deep convs, as in Table 1' if here[0] > here[1] + 0.02 else
                   'conv1 not above the deep convs, unlike Table 1')
        pattern += ('; fc slopes below conv1, as in Table 1' if here[2] < here[0] else
                    '; fc slopes above conv1, unlike Table 1')
    return (f'- Slopes, {VARIANTS[variant]}: conv1 {here[0]:.3f}, conv31-36 mean {here[1]:.3f}, fc1-2 mean '
            f'{here[2]:.3f} (paper {there[0]:.3f}, {there[1]:.3f}, {there[2]:.3f}): {pattern}.')


def verdict(runs: Sequence[AblationRun]) -> List[str]:
    """The paired differences and their verdicts, the underfitting check, and the slopes against Table 1."""
    s = summarize(runs)
    num_classes = runs[0].num_classes
    diverged = [r for r in runs if r.diverged_at is not None]
    lines = [f'- Diverged (loss not finite; training stopped, and the seed left out of every statistic): '
             + ', '.join(f'{VARIANTS[r.variant]} seed {r.seed} at iteration {r.diverged_at}' for r in diverged)
             + '.'] if diverged else []
    relu = paired_difference(runs, 'relu', 'prelu')
    lines.append(f'- {relu}: {ordering_verdict(relu)}.')
    if 'prelu_shared' in s:
        shared = paired_difference(runs, 'prelu_shared', 'prelu')
        lines.append(f'- {shared}: {equivalence_verdict(shared)} (the paper: comparable, '
                     f'{PAPER_TABLE2["prelu_shared"][0] - PAPER_TABLE2["prelu"][0]:.2f} points apart).')
    lines.append(f'- The paper (one run each, ImageNet): ReLU - channel-wise '
                 f'{PAPER_TABLE2["relu"][0] - PAPER_TABLE2["prelu"][0]:+.2f}, channel-shared - channel-wise '
                 f'{PAPER_TABLE2["prelu_shared"][0] - PAPER_TABLE2["prelu"][0]:+.2f} points.')
    lines.append('- Final training loss (mean of the last tenth of the iterations, dropout on), mean +- sd: '
                 + ', '.join(f'{VARIANTS[v]} {vs.loss[0]:.3f} +- {vs.loss[1]:.3f}' for v, vs in s.items()) + '. '
                 + _fit_line(s, num_classes))
    lines += [_slopes_line(v, s[v].slopes) for v in ('prelu_shared', 'prelu') if v in s and s[v].slopes]
    return lines


def _data_line(config: AblationConfig, num_classes: int) -> str:
    if config.data == 'digits':
        return (f"scikit-learn's digits (8x8 gray scans, 80 / 20 split by seed) upsampled to {config.resize} px, "
                f'{config.crop} px crops + flips')
    return (f'{DATASETS["photos"]}: {num_classes} classes, each photo resized to a {config.short_side} px shorter '
            f'side; {config.resize} px patches, {config.train_per_photo} train / {config.test_per_photo} test per '
            f'photo, from the alternating squares of a {config.short_side // 2} px checkerboard (no train patch '
            f'overlaps a test patch); {config.crop} px crops + flips')


def format_summary(runs: Sequence[AblationRun], config: AblationConfig, machine: Optional[str] = None) -> str:
    """Markdown: Table 2 (mean +- sd over seeds, final training loss, paper figures alongside), the verdicts,
    Table 1 (slopes per layer) and every run; ``machine`` (where and how long it ran) closes it."""
    s = summarize(runs)
    n = len({r.seed for r in complete(runs)})
    num_classes = runs[0].num_classes
    lines = [f'A CPU analogue of model E of He & Sun 2014 (conv1 {config.width}, conv2x {2 * config.width}, conv3x '
             f'{4 * config.width}, fc {config.fc_dim}), on {_data_line(config, num_classes)}; SGD lr {config.lr} '
             f'(x0.1 at {", ".join(f"{int(f * config.steps)}" for f in config.lr_steps)}), momentum '
             f'{config.momentum}, wd {config.weight_decay}, batch {config.batch_size}, {config.steps} iterations; '
             f'paired seeds {list(config.seeds)}. Test: 10 views (4 corners + centre, and flips) at '
             f'{config.resize} px, softmax averaged.', '',
             f'## Table 2 layout: error (%), mean +- sd over {n} seeds', '',
             '| model | top-1 | top-5 | final train loss | paper top-1 | paper top-5 |', '|---|---|---|---|---|---|']
    for v, vs in s.items():
        lines.append(f'| {VARIANTS[v]} | {vs.top1[0]:.2f} +- {vs.top1[1]:.2f} | {vs.top5[0]:.2f} +- {vs.top5[1]:.2f} '
                     f'| {vs.loss[0]:.3f} +- {vs.loss[1]:.3f} | {PAPER_TABLE2[v][0]:.2f} | {PAPER_TABLE2[v][1]:.2f} |')
    lines += ['', '## Verdict (top-1 error, paired by seed)', ''] + verdict(runs)
    lines += ['', f'## Table 1 layout: learned slopes (mean over channels, then over {n} seeds; init 0.25)', '',
              '| layer | channel-shared | channel-wise | paper shared | paper channel-wise |', '|---|---|---|---|---|']
    for i, layer in enumerate(LAYERS):
        cells = [f'{s[v].slopes[i]:.3f}' if v in s and s[v].slopes else '-' for v in ('prelu_shared', 'prelu')]
        lines.append(f'| {layer} | {cells[0]} | {cells[1]} | {PAPER_TABLE1["prelu_shared"][i]:.3f} | '
                     f'{PAPER_TABLE1["prelu"][i]:.3f} |')
    lines += ['', '## Per run', '', '| model | seed | top-1 | top-5 | final train loss |', '|---|---|---|---|---|']
    for r in runs:
        lines.append(f'| {VARIANTS[r.variant]} | {r.seed} | {r.top1_err:.2f} | {r.top5_err:.2f} | '
                     + (f'{final_loss(r):.3f} |' if r.diverged_at is None else
                        f'diverged at iteration {r.diverged_at} |'))
    if machine:
        lines += ['', machine]
    return '\n'.join(lines)


def machine_line(elapsed_s: float, threads: int) -> str:
    """Where and how long the run took: CPU model, cores, threads, ISA flags, wall time, load average."""
    from ..benchmark.machine import describe_machine
    info = describe_machine()
    load = info.get('load_average_at_start')
    return (f"Ran on {info['cpu']} ({info['cores_available']} cores available, {threads} torch "
            f"thread{'s' * (threads != 1)}; ISA flags: {', '.join(info['isa']) or 'none of the listed'}) in "
            f'{int(elapsed_s // 60)} min {elapsed_s % 60:02.0f} s'
            + (f"; load average at the end {' / '.join(map(str, load))} (1 / 5 / 15 min)" if load else '') + '.')


def plot_ablation(runs: Sequence[AblationRun], path: Union[str, os.PathLike]) -> Path:
    """Left: top-1 error per variant (each seed, lines joining a seed's runs; mean +- sd). Right: learned slopes
    per layer vs the paper's."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    runs = complete(runs)
    s = summarize(runs)
    colors = {'relu': 'tab:gray', 'prelu_shared': 'tab:blue', 'prelu': 'tab:red'}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={'width_ratios': [1, 2]})
    order = list(s)
    for seed in sorted({r.seed for r in runs}):
        by = {r.variant: r.top1_err for r in runs if r.seed == seed}
        ax1.plot(range(len(order)), [by.get(v, np.nan) for v in order], color='gray', lw=0.6, alpha=0.4)
    for i, (v, vs) in enumerate(s.items()):
        errs = [r.top1_err for r in runs if r.variant == v]
        ax1.scatter([i] * len(errs), errs, color=colors[v], alpha=0.6, s=18)
        ax1.errorbar(i + 0.15, vs.top1[0], yerr=vs.top1[1], fmt='o', color=colors[v], capsize=4)
    ax1.set_xticks(range(len(s)), [VARIANTS[v].replace('PReLU ', 'PReLU\n') for v in s])
    ax1.set_ylabel('10-view top-1 error (%)')
    ax1.set_title('Table 2: error per seed (paired), mean +- sd')
    ax1.grid(alpha=0.3, axis='y')
    x = np.arange(len(LAYERS))
    for v in ('prelu_shared', 'prelu'):
        if v in s and s[v].slopes:
            ax2.plot(x, s[v].slopes, 'o-', color=colors[v], label=f'{VARIANTS[v]} (here)')
        ax2.plot(x, PAPER_TABLE1[v], 'x--', color=colors[v], alpha=0.6, label=f'{VARIANTS[v]} (paper, ImageNet)')
    ax2.axhline(0.25, color='gray', lw=0.8, ls=':', label='init 0.25')
    ax2.set_xticks(x, LAYERS, rotation=45)
    ax2.set_ylabel('learned slope a (mean)')
    ax2.set_title('Table 1: learned slopes per layer')
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def write_ablation(runs: Sequence[AblationRun], out_dir: Union[str, os.PathLike], config: AblationConfig,
                   machine: Optional[str] = None) -> Dict[str, Path]:
    """Write ablation.png, summary.md and runs.csv into ``out_dir`` (a ``finished_output_dir`` work folder)."""
    out = Path(out_dir)
    paths = {'plot': out / 'ablation.png', 'summary': out / 'summary.md', 'runs': out / 'runs.csv'}
    plot_ablation(runs, paths['plot'])
    write_atomic(paths['summary'], format_summary(runs, config, machine) + '\n')
    write_atomic(paths['runs'], lambda tmp: _write_csv(runs, tmp))
    return paths


def _write_csv(runs: Sequence[AblationRun], path: Path) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['variant', 'seed', 'top1_err', 'top5_err', 'final_loss', 'diverged_at']
                        + [f'slope_{l}' for l in LAYERS])
        for r in runs:
            writer.writerow([r.variant, r.seed, f'{r.top1_err:.4f}', f'{r.top5_err:.4f}', f'{final_loss(r):.5f}',
                             '' if r.diverged_at is None else r.diverged_at]
                            + [f'{a:.5f}' for a in r.slopes] + [''] * (len(LAYERS) - len(r.slopes)))
