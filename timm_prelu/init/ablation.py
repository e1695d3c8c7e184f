"""The paper's small-model ablation (He et al., ICCV 2015, Tables 1 and 2) at CPU scale.

The paper trains its 14-layer small model (model E of SPP-net) three times, with ReLU, channel-shared PReLU and
channel-wise PReLU, and reports 10-view top-1 / top-5 error (Table 2: 33.82 / 13.34, 32.71 / 12.87, 32.64 / 12.75)
and the learned slopes per layer (Table 1: larger in conv1, small in the deep layers and the fc layers). Here the
three variants train on the same data, batches, initial weights' seeds and step schedule, over several seeds, so the
gap between them can be read against its spread.

Model E: conv1 7x7, 64, /2; pool 3x3, /3; conv21-24 2x2, 128; pool 2x2, /2; conv31-36 2x2, 256; SPP {6, 3, 2, 1};
fc1 4096, fc2 4096, fc3 classes; a rectifier after every conv, fc1 and fc2; dropout 0.5 after fc1 and fc2.
Kept: every layer, kernel, stride and pool; the three rectifiers (slopes initialised to 0.25, no weight decay on
them); He init, backward case (Eqn. 14, n = k^2 d) for the convs as the paper trained them; SGD with momentum 0.9
and weight decay 5e-4; lr 1e-2 -> 1e-3 -> 1e-4 at the same iterations for every variant (the paper's fair
comparison); training on random crops of images resized to the 256/224 ratio, with random horizontal flips; testing
with 10 views (four corners and the centre, and their flips, softmax averaged).

Scaled down, each for CPU minutes on scikit-learn's 1,797 digits:

- Images: 8x8 gray digit scans upsampled to 55 px, crops of 48 px (the paper: 256 px, crops of 224; 48/55 is
  224/256), one input channel instead of RGB. The maps are then 24, 8 and 4 px (the paper's 112, 37 and 18).
- Widths: conv1 16, conv2x 32, conv3x 64 (a quarter of 64 / 128 / 256); fc1 and fc2 128 (not 4096).
- 2x2 convs: the paper does not give their padding; here they alternate padding 1 and 0, so each pair keeps the
  map size (the paper's table has one size per stage) and the bins stay centred.
- SPP levels capped at the 4 px last map: {4, 3, 2, 1} (finer bins than the map would repeat cells).
- fc layers: He init, forward case (n = fan-in), not the paper's std 0.01 / 0.001, which it chose for unnormalised
  pixels (range about +-128); these images are normalised to zero mean and unit variance.
- Schedule: a few thousand iterations at batch 64 (the paper: 75 epochs of ImageNet at batch 128), lr steps at 60%
  and 85% of the run.
- Top-5 error of 10 classes is near 0 for every variant: reported for Table 2's layout, not as evidence.
"""
import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..layers import create_rectifier, rectifier_slope
from ..outputs import save_figure, write_atomic
from .depth import sgd_step, shuffled_batches

__all__ = ['VARIANTS', 'SmallNet', 'AblationConfig', 'AblationRun', 'train_small_net', 'ten_view_scores',
           'run_ablation', 'summarize', 'verdict', 'format_summary', 'plot_ablation', 'write_ablation']

# The paper's Table 2 rows, in its order: model act -> label.
VARIANTS: Dict[str, str] = {'relu': 'ReLU', 'prelu_shared': 'PReLU channel-shared', 'prelu': 'PReLU channel-wise'}
# Table 2 (top-1, top-5 error %) and Table 1 (learned slopes: channel-shared, channel-wise mean) of the paper.
PAPER_TABLE2 = {'relu': (33.82, 13.34), 'prelu_shared': (32.71, 12.87), 'prelu': (32.64, 12.75)}
PAPER_TABLE1 = {
    'prelu_shared': (0.681, 0.103, 0.099, 0.228, 0.561, 0.126, 0.089, 0.124, 0.062, 0.008, 0.210, 0.063, 0.031),
    'prelu': (0.596, 0.321, 0.204, 0.294, 0.464, 0.196, 0.152, 0.145, 0.124, 0.134, 0.198, 0.074, 0.075),
}
LAYERS = ('conv1', 'conv21', 'conv22', 'conv23', 'conv24',
          'conv31', 'conv32', 'conv33', 'conv34', 'conv35', 'conv36', 'fc1', 'fc2')
NUM_CLASSES = 10


class SmallNet(nn.Module):
    """Model E of SPP-net (the paper's 14-layer small model), narrow; layers named as in the paper's Table 1."""

    def __init__(self, act: str = 'prelu', in_chans: int = 1, num_classes: int = NUM_CLASSES, width: int = 16,
                 fc_dim: int = 128, spp_levels: Sequence[int] = (4, 3, 2, 1), drop_rate: float = 0.5) -> None:
        """
        Args:
            act: 'relu', 'prelu_shared' or 'prelu' (channel-wise).
            width: conv1's channels (the paper's 64); conv2x get twice, conv3x four times as many.
            fc_dim: Width of fc1 and fc2 (the paper's 4096).
            spp_levels: Pyramid levels (the paper's {6, 3, 2, 1}).
        """
        super().__init__()
        self.act = act
        chs = {'conv1': width, **{f'conv2{i}': 2 * width for i in range(1, 5)},
               **{f'conv3{i}': 4 * width for i in range(1, 7)}}
        prev = in_chans
        for i, (name, c) in enumerate(chs.items()):
            if name == 'conv1':
                conv = nn.Conv2d(prev, c, 7, stride=2, padding=3)
            else:  # 2x2 convs: padding 1 then 0, so each pair keeps the size
                conv = nn.Conv2d(prev, c, 2, padding=1 if int(name[-1]) % 2 else 0)
            self.add_module(name, conv)
            self.add_module(f'act_{name}', create_rectifier(act, c))
            prev = c
        self.pool1 = nn.MaxPool2d(3, stride=3)
        self.pool2 = nn.MaxPool2d(2, stride=2)
        self.spp_levels = tuple(int(n) for n in spp_levels)
        self.fc1 = nn.Linear(prev * sum(n * n for n in self.spp_levels), fc_dim)
        self.act_fc1 = create_rectifier(act, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.act_fc2 = create_rectifier(act, fc_dim)
        self.fc3 = nn.Linear(fc_dim, num_classes)
        self.drop = nn.Dropout(drop_rate)

    def rectifier(self, layer: str) -> nn.Module:
        return getattr(self, f'act_{layer}')

    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None) -> None:
        """He init for the rectifier after each layer: backward case for convs (the paper's Eqn. 14), forward case
        for the fc layers (the classifier for the rectifier before it)."""
        for name in LAYERS + ('fc3',):
            layer = getattr(self, name)
            slope = rectifier_slope(self.rectifier(name if name != 'fc3' else 'fc2'))
            mode = 'fan_out' if name.startswith('conv') else 'fan_in'
            n = math.prod(layer.weight.shape[2:]) * layer.weight.shape[0 if mode == 'fan_out' else 1]
            std = math.sqrt(2.0 / ((1.0 + slope ** 2) * n))
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
            layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def conv(name, x):
            return self.rectifier(name)(getattr(self, name)(x))
        x = self.pool1(conv('conv1', x))
        for i in range(1, 5):
            x = conv(f'conv2{i}', x)
        x = self.pool2(x)
        for i in range(1, 7):
            x = conv(f'conv3{i}', x)
        x = self.drop(self.act_fc1(self.fc1(self.spp(x))))
        x = self.drop(self.act_fc2(self.fc2(x)))
        return self.fc3(x)

    def spp(self, x: torch.Tensor) -> torch.Tensor:
        # the bins of SpatialPyramidPool(bins='adaptive'), with torch's own kernel: this network is never exported
        return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in self.spp_levels], dim=1)

    def slopes(self) -> List[float]:
        """Mean learned slope of each rectifier, in LAYERS order (empty for ReLU)."""
        if self.act == 'relu':
            return []
        return [float(self.rectifier(name).weight.detach().mean()) for name in LAYERS]


@dataclass(frozen=True)
class AblationConfig:
    """Everything a run depends on besides the rectifier and the seed."""
    steps: int = 600
    lr: float = 0.01
    lr_steps: Tuple[float, float] = (0.6, 0.85)  # fractions of the run where the lr drops 10x
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    resize: int = 55  # the paper's 256
    crop: int = 48  # the paper's 224
    width: int = 16
    fc_dim: int = 128
    seeds: Tuple[int, ...] = (0, 1, 2)

    @classmethod
    def quick(cls, **kwargs) -> 'AblationConfig':
        """A short schedule that still learns well above chance: what CI runs."""
        return cls(**{**dict(steps=200, lr_steps=(0.75, 0.9), width=8, fc_dim=64), **kwargs})


@dataclass
class AblationRun:
    """One training run: per-iteration loss, 10-view test errors and the learned slopes per layer."""
    variant: str
    seed: int
    losses: List[float] = field(default_factory=list)
    top1_err: float = float('nan')
    top5_err: float = float('nan')
    slopes: List[float] = field(default_factory=list)


def digits_split(size: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits at ``size`` px, normalised, split 80 / 20 by ``seed`` (the depth experiment's data)."""
    from .depth import digits_tensors
    return digits_tensors(size, seed=seed)


def _random_crops(x: torch.Tensor, crop: int, gen: torch.Generator) -> torch.Tensor:
    """One random ``crop`` x ``crop`` window per image, horizontally flipped with probability 1/2."""
    b, _, h, w = x.shape
    oy = torch.randint(0, h - crop + 1, (b,), generator=gen)
    ox = torch.randint(0, w - crop + 1, (b,), generator=gen)
    ar = torch.arange(crop)
    rows = (oy[:, None] + ar)[:, :, None]
    cols = ox[:, None] + ar
    flip = torch.rand(b, generator=gen) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]
    return x[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def ten_view_scores(model: nn.Module, x: torch.Tensor, crop: int) -> torch.Tensor:
    """Softmax averaged over 10 views: the four corner crops and the centre crop, and their horizontal flips."""
    h, w = x.shape[-2:]
    if crop > min(h, w):
        raise ConfigError(f'crop {crop} px is larger than the {h}x{w} px images', param='crop')
    top, left = (h - crop) // 2, (w - crop) // 2
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (top, left)]
    with torch.no_grad():
        probs = torch.zeros(x.shape[0], NUM_CLASSES)
        for y0, x0 in corners:
            view = x[..., y0:y0 + crop, x0:x0 + crop]
            for v in (view, view.flip(-1)):
                probs += F.softmax(model(v), dim=1)
    return probs / 10


def _lr_at(step: int, config: AblationConfig) -> float:
    drops = sum(step >= int(f * config.steps) for f in config.lr_steps)
    return config.lr * 0.1 ** drops


def train_small_net(variant: str, data: Tuple[torch.Tensor, ...], config: AblationConfig, seed: int,
                    progress=None) -> AblationRun:
    """Train ``SmallNet(act=variant)`` on ``data`` (train x, y, val x, y); weights and batches depend on ``seed`` only."""
    if variant not in VARIANTS:
        raise ConfigError(f'unknown variant {variant!r}: choose from {list(VARIANTS)}', param='variant')
    x_train, y_train, x_val, y_val = data
    model = SmallNet(act=variant, width=config.width, fc_dim=config.fc_dim)
    model.init_weights(torch.Generator().manual_seed(seed))
    slopes = [p for n, p in model.named_parameters() if n.startswith('act_')]
    decayed = [p for n, p in model.named_parameters() if not n.startswith('act_') and n.endswith('weight')]
    others = [p for n, p in model.named_parameters() if not n.startswith('act_') and not n.endswith('weight')]
    optimizer = torch.optim.SGD([{'params': decayed, 'weight_decay': config.weight_decay},
                                 {'params': others + slopes, 'weight_decay': 0.0}],  # no decay on slopes, biases
                                lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(seed)  # the same batches, crops and flips for every variant
    torch.manual_seed(seed)  # dropout masks
    run = AblationRun(variant, seed)
    model.train()
    for step, idx in zip(range(config.steps), shuffled_batches(len(x_train), config.batch_size, gen)):
        for group in optimizer.param_groups:
            group['lr'] = _lr_at(step, config)
        loss = F.cross_entropy(model(_random_crops(x_train[idx], config.crop, gen)), y_train[idx])
        run.losses.append(sgd_step(optimizer, loss))
        if progress is not None:
            progress.update(1)
    model.eval()
    probs = ten_view_scores(model, x_val, config.crop)
    top5 = probs.topk(5, dim=1).indices
    run.top1_err = 100.0 * float((top5[:, 0] != y_val).float().mean())
    run.top5_err = 100.0 * float((top5 != y_val[:, None]).all(dim=1).float().mean())
    run.slopes = model.slopes()
    return run


def run_ablation(config: AblationConfig = AblationConfig(), variants: Sequence[str] = tuple(VARIANTS),
                 show_progress: bool = True) -> List[AblationRun]:
    """Train every variant at every seed of ``config``; a seed fixes the data split, weights, batches and crops."""
    from tqdm import tqdm
    if config.steps < 50:
        raise ConfigError(f'steps {config.steps} is too few to train: use at least 50', param='steps')
    if len(config.seeds) < 2:
        raise ConfigError(f'a spread needs at least 2 seeds, got {list(config.seeds)}', param='seeds')
    runs = []
    with tqdm(total=config.steps * len(variants) * len(config.seeds), desc='ablation', unit='it',
              disable=not show_progress) as bar:
        for seed in config.seeds:
            data = digits_split(config.resize, seed)
            for variant in variants:
                bar.set_postfix_str(f'seed {seed}, {variant}')
                runs.append(train_small_net(variant, data, config, seed, progress=bar))
    return runs


@dataclass
class VariantSummary:
    variant: str
    top1: Tuple[float, float]  # mean, sd over seeds
    top5: Tuple[float, float]
    slopes: List[float]  # per layer, mean over seeds


def _mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(runs: Sequence[AblationRun]) -> Dict[str, VariantSummary]:
    """Mean and sd over seeds of each variant's errors, and its mean slope per layer."""
    out = {}
    for variant in VARIANTS:
        rs = [r for r in runs if r.variant == variant]
        if rs:
            slopes = np.mean([r.slopes for r in rs], axis=0).tolist() if rs[0].slopes else []
            out[variant] = VariantSummary(variant, _mean_sd([r.top1_err for r in rs]),
                                          _mean_sd([r.top5_err for r in rs]), slopes)
    return out


def _paired_gap(runs: Sequence[AblationRun], worse: str, better: str) -> Tuple[float, float, int]:
    """Mean and standard error over seeds of top-1(worse) - top-1(better), paired by seed (same data and batches),
    and the number of seeds where the difference is positive."""
    by = {(r.variant, r.seed): r.top1_err for r in runs}
    diffs = [by[(worse, s)] - by[(better, s)] for s in sorted({r.seed for r in runs})]
    mean, sd = _mean_sd(diffs)
    return mean, sd / math.sqrt(len(diffs)), sum(d > 0 for d in diffs)


def verdict(runs: Sequence[AblationRun]) -> List[str]:
    """Whether the paper's order (channel-wise <= channel-shared <= ReLU top-1 error) holds, given the spread, and
    whether the slopes follow Table 1's pattern (larger in conv1 than in the deep layers)."""
    s = summarize(runs)
    n = len({r.seed for r in runs})
    lines = []
    pairs = [('relu', 'prelu_shared'), ('prelu_shared', 'prelu'), ('relu', 'prelu')]
    holds = all(s[w].top1[0] >= s[b].top1[0] - 1e-9 for w, b in pairs[:2])  # a tie counts as holding
    lines.append(f"The paper's ordering (channel-wise <= channel-shared <= ReLU top-1 error) "
                 f"{'holds' if holds else 'does not hold'} in the means over {n} seeds.")
    from scipy.stats import t as student_t
    for worse, better in pairs:
        gap, se, higher = _paired_gap(runs, worse, better)
        half = float(student_t.ppf(0.975, n - 1)) * se
        sure = gap - half > 0 or gap + half < 0
        lines.append(f'- {VARIANTS[worse]} - {VARIANTS[better]}: {gap:+.2f} +- {se:.2f} points (mean +- standard error '
                     f'over seeds, paired: same data and batches; higher at {higher} of {n} seeds); 95% interval [{gap - half:+.2f}, {gap + half:+.2f}] '
                     f'(t, {n - 1} df) {"excludes" if sure else "includes"} 0: '
                     f'{"a real difference at this scale" if sure else "not distinguishable from seed noise here"}.')
    lines.append(f'The paper: {PAPER_TABLE2["relu"][0] - PAPER_TABLE2["prelu_shared"][0]:.2f} and '
                 f'{PAPER_TABLE2["prelu_shared"][0] - PAPER_TABLE2["prelu"][0]:.2f} points (one run each, ImageNet).')
    for variant in ('prelu_shared', 'prelu'):
        sl, paper = s[variant].slopes, PAPER_TABLE1[variant]
        early, deep = sl[0], float(np.mean(sl[5:]))
        pattern = 'larger early, smaller deep, as in Table 1' if early > deep else 'not the pattern of Table 1'
        if float(np.mean([abs(a - 0.25) for a in sl[5:]])) < 0.02:
            pattern += '; the deep slopes barely moved from their init 0.25 in this run'
        lines.append(f'Slopes, {VARIANTS[variant]}: conv1 {early:.3f}, conv31-fc2 mean {deep:.3f} (paper '
                     f'{paper[0]:.3f} and {float(np.mean(paper[5:])):.3f}): {pattern}.')
    return lines


def format_summary(runs: Sequence[AblationRun], config: AblationConfig) -> str:
    """Markdown: Table 2 (mean +- sd over seeds, paper figures alongside), Table 1 (slopes per layer), verdict."""
    s = summarize(runs)
    n = len({r.seed for r in runs})
    lines = [f'Model E of SPP-net, narrow (conv1 {config.width}, conv2x {2 * config.width}, conv3x '
             f'{4 * config.width}, fc {config.fc_dim}), on scikit-learn digits ({config.resize} px, {config.crop} px '
             f'crops + flips); SGD lr {config.lr} (x0.1 at {", ".join(f"{int(f * config.steps)}" for f in config.lr_steps)}'
             f'), momentum {config.momentum}, wd {config.weight_decay}, batch {config.batch_size}, {config.steps} '
             f'iterations; seeds {list(config.seeds)}. Test: 10 views (4 corners + centre, and flips) at '
             f'{config.resize} px, softmax averaged.', '',
             f'## Table 2 layout: error (%), mean +- sd over {n} seeds', '',
             '| model | top-1 | top-5 | paper top-1 | paper top-5 |', '|---|---|---|---|---|']
    for v, vs in s.items():
        lines.append(f'| {VARIANTS[v]} | {vs.top1[0]:.2f} +- {vs.top1[1]:.2f} | {vs.top5[0]:.2f} +- {vs.top5[1]:.2f} '
                     f'| {PAPER_TABLE2[v][0]:.2f} | {PAPER_TABLE2[v][1]:.2f} |')
    lines += ['', f'## Table 1 layout: learned slopes (mean over channels, then over {n} seeds; init 0.25)', '',
              '| layer | channel-shared | channel-wise | paper shared | paper channel-wise |', '|---|---|---|---|---|']
    for i, layer in enumerate(LAYERS):
        cells = [f'{s[v].slopes[i]:.3f}' if v in s and s[v].slopes else '-' for v in ('prelu_shared', 'prelu')]
        lines.append(f'| {layer} | {cells[0]} | {cells[1]} | {PAPER_TABLE1["prelu_shared"][i]:.3f} | '
                     f'{PAPER_TABLE1["prelu"][i]:.3f} |')
    lines += ['', '## Per run', '', '| model | seed | top-1 | top-5 | final train loss |', '|---|---|---|---|---|']
    for r in runs:
        final = float(np.mean(r.losses[-max(10, len(r.losses) // 10):]))
        lines.append(f'| {VARIANTS[r.variant]} | {r.seed} | {r.top1_err:.2f} | {r.top5_err:.2f} | {final:.3f} |')
    lines += ['', '## Verdict', ''] + verdict(runs)
    return '\n'.join(lines)


def plot_ablation(runs: Sequence[AblationRun], path: Union[str, os.PathLike]) -> Path:
    """Left: top-1 error per variant (each seed, mean +- sd). Right: learned slopes per layer vs the paper's."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    s = summarize(runs)
    colors = {'relu': 'tab:gray', 'prelu_shared': 'tab:blue', 'prelu': 'tab:red'}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={'width_ratios': [1, 2]})
    for i, (v, vs) in enumerate(s.items()):
        errs = [r.top1_err for r in runs if r.variant == v]
        ax1.scatter([i] * len(errs), errs, color=colors[v], alpha=0.6, s=18)
        ax1.errorbar(i + 0.15, vs.top1[0], yerr=vs.top1[1], fmt='o', color=colors[v], capsize=4)
    ax1.set_xticks(range(len(s)), [VARIANTS[v].replace('PReLU ', 'PReLU\n') for v in s])
    ax1.set_ylabel('10-view top-1 error (%)')
    ax1.set_title('Table 2: error per seed, mean +- sd')
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


def write_ablation(runs: Sequence[AblationRun], out_dir: Union[str, os.PathLike], config: AblationConfig
                   ) -> Dict[str, Path]:
    """Write ablation.png, summary.md and runs.csv into ``out_dir`` (a ``finished_output_dir`` work folder)."""
    out = Path(out_dir)
    paths = {'plot': out / 'ablation.png', 'summary': out / 'summary.md', 'runs': out / 'runs.csv'}
    plot_ablation(runs, paths['plot'])
    write_atomic(paths['summary'], format_summary(runs, config) + '\n')
    write_atomic(paths['runs'], lambda tmp: _write_csv(runs, tmp))
    return paths


def _write_csv(runs: Sequence[AblationRun], path: Path) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['variant', 'seed', 'top1_err', 'top5_err', 'final_loss'] + [f'slope_{l}' for l in LAYERS])
        for r in runs:
            final = float(np.mean(r.losses[-max(10, len(r.losses) // 10):]))
            writer.writerow([r.variant, r.seed, f'{r.top1_err:.4f}', f'{r.top5_err:.4f}', f'{final:.5f}']
                            + [f'{a:.5f}' for a in r.slopes] + [''] * (len(LAYERS) - len(r.slopes)))
