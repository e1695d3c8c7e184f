"""A CPU-scale analogue of the paper's depth experiment (He et al., ICCV 2015, Figures 2 and 3).

Plain ReLU conv nets (no batch norm, no shortcuts) of 22 and 30 layers are trained from scratch with He init and with
Xavier init: same data, batches and SGD. The paper: the 22-layer net converges with both, faster with He; the
30-layer net converges with He and completely stalls with Xavier, whose n Var[w] = 1 leaves the ReLU's factor 1/2 at
every layer, so signals and gradients shrink like 1/2^L.

The nets are analogues, not the paper's (see :mod:`timm_prelu.init.plain_net`): 3x3 convs, narrow, on digits, where
the paper's 22-layer net is model B and its 30-layer net Table 1's small model plus 16 extra 2x2 convs, both on
ImageNet. Scale: scikit-learn's 1,797 handwritten digits at 16 x 16 px, gray; widths 16 / 32 / 64 over three stages
and fc 64 instead of 64-512 and fc 4096; batch 32 instead of 128. Kept from the paper: ReLU, depth counted as conv +
fc, Gaussian weights, zero biases, SGD with momentum 0.9, one learning rate for all runs, and the Xavier form the
paper compares against (n Var[w] = 1, std sqrt(1/n): 1/sqrt(2) of He's std at every layer). Choices, measured at
seed 0-5:

- lr 0.002: at 0.005 and 0.01 some seeds' 30-layer He nets die in the first iterations (a plain 30-layer net has
  nothing to absorb a large first step); at 0.002 all six converged. Xavier's time to leave the plateau barely
  depends on lr (22 layers: about 1,600 iterations at 0.005 and 0.01, 2,100 at 0.002).
- No weight decay (the paper: 5e-4): at this scale the decay outweighs Xavier's tiny gradients and keeps even the
  22-layer Xavier net at chance (2,500 iterations at lr 0.01, where it leaves the plateau at 1,600 without decay).
  The balance moves with the map size, since conv weight gradients sum over positions (56 x 56 on ImageNet).
- Width 16: the per-layer variance factor fluctuates around its expectation with variance about 5/d at d channels,
  so at width 8 even He's signal wanders by e^+-3 over 27 layers; 16 channels halve that.
"""
import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .rules import init_weights_
from ..outputs import save_figure
from .plain_net import PlainNet

__all__ = ['DepthConfig', 'DepthRun', 'digits_tensors', 'train_plain_net', 'run_depth_experiment',
           'format_summary', 'plot_depth_experiment', 'write_depth_experiment']

INIT_MODES = ('fan_in', 'fan_out')
CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over the 10 digits


@dataclass(frozen=True)
class DepthConfig:
    """Everything a run depends on besides depth, init rule and seed."""
    steps: int = 3000
    lr: float = 0.002
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 0.0
    img_size: int = 16
    width: int = 16
    fc_dim: int = 64
    # n of both rules: 'fan_in' (k^2 c, He's forward case and Xavier as the paper compares it, n Var[w] = 1, measured
    # above) or 'fan_out' (k^2 d, the backward case the paper trained its models with; Xavier then n = k^2 d too)
    init_mode: str = 'fan_in'


@dataclass
class DepthRun:
    """One training run: the loss of every iteration and the accuracy on held-out digits at the end."""
    depth: int
    rule: str
    losses: List[float] = field(default_factory=list)
    val_accuracy: float = float('nan')

    @property
    def label(self) -> str:
        return f'{self.depth}-layer, {self.rule}'

    def smoothed(self, window: int = 25) -> np.ndarray:
        """Running mean over ``window`` iterations (shorter at the start)."""
        x = np.asarray(self.losses, dtype=np.float64)
        c = np.cumsum(np.insert(x, 0, 0.0))
        lo = np.maximum(np.arange(1, len(x) + 1) - window, 0)
        return (c[1:] - c[lo]) / (np.arange(1, len(x) + 1) - lo)

    @property
    def initial_loss(self) -> float:
        return float(np.mean(self.losses[:25]))

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of the iterations (at least 25)."""
        return float(np.mean(self.losses[-max(25, len(self.losses) // 10):]))

    @property
    def drop(self) -> float:
        """Fraction of the initial loss gone by the end: 0 for a stalled run, near 1 for a converged one."""
        return 1.0 - self.final_loss / self.initial_loss

    def first_step_below(self, fraction: float) -> Optional[int]:
        """First iteration whose smoothed loss is below ``fraction`` of the initial loss (None if never)."""
        below = np.flatnonzero(self.smoothed() < fraction * self.initial_loss)
        return int(below[0]) + 1 if below.size else None

    @property
    def verdict(self) -> str:
        """'converges' (loss at least halved), 'stalls' (within 5% of where it began), else 'starts to learn'."""
        if not np.isfinite(self.final_loss):
            return 'diverged'
        if self.drop >= 0.5:
            return 'converges'
        if self.drop < 0.05:
            return 'stalls'
        return 'starts to learn'


def digits_tensors(img_size: int = 16, seed: int = 0, val_fraction: float = 0.2
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as normalised gray (N, 1, size, size) tensors: train images, labels, val images, labels."""
    from ..demo.datasets import digits_images
    images, labels, _ = digits_images(img_size)
    x = torch.from_numpy(images[..., 0].astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[val], y[val]


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Indices of batches drawn without replacement; a new permutation when the rest is shorter than a batch."""
    while True:
        order = torch.randperm(n, generator=generator)
        for pos in range(0, n - batch_size + 1, batch_size):
            yield order[pos:pos + batch_size]


def sgd_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimiser step on ``loss``; returns its value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_plain_net(
        depth: int,
        rule: str,
        data: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        config: DepthConfig = DepthConfig(),
        seed: int = 0,
        progress=None,
) -> DepthRun:
    """Train a ``depth``-layer plain ReLU net initialised with ``rule`` for ``config.steps`` SGD iterations.

    ``progress``: a progress bar (``timm_prelu.progress``) to advance once per iteration (its postfix shows the running loss).
    """
    x_train, y_train, x_val, y_val = data
    torch.manual_seed(seed)
    model = PlainNet(depth=depth, num_classes=10, in_chans=1, img_size=config.img_size, width=config.width,
                     fc_dim=config.fc_dim, act='relu')
    if config.init_mode not in INIT_MODES:
        raise ConfigError(f'unknown init_mode {config.init_mode!r}: choose one of {INIT_MODES}', param='config')
    init_weights_(model, rule, generator=torch.Generator().manual_seed(seed), mode=config.init_mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    batches = torch.Generator().manual_seed(seed)  # the same batches for every depth and rule
    run = DepthRun(depth, rule)
    model.train()
    for step, idx in zip(range(config.steps), shuffled_batches(len(x_train), config.batch_size, batches)):
        run.losses.append(sgd_step(optimizer, F.cross_entropy(model(x_train[idx]), y_train[idx])))
        if progress is not None:
            progress.update(1)
            if step % 25 == 0:
                progress.set_postfix_str(f'{run.label}: loss {run.smoothed()[-1]:.3f}')
    model.eval()
    with torch.no_grad():
        run.val_accuracy = float((model(x_val).argmax(1) == y_val).float().mean())
    return run


def run_depth_experiment(
        depths: Sequence[int] = (22, 30),
        rules: Sequence[str] = ('he', 'xavier'),
        config: DepthConfig = DepthConfig(),
        seed: int = 0,
        show_progress: bool = True,
) -> List[DepthRun]:
    """Train every (depth, rule) pair on the same data, batches and seed."""
    from ..progress import progress
    if config.steps < 50:
        raise ConfigError(f'steps={config.steps} is too few to tell converging from stalling: use at least 50',
                          param='steps')
    data = digits_tensors(config.img_size, seed=seed)
    runs = []
    with progress(total=config.steps * len(depths) * len(rules), desc='depth experiment', unit='it',
                  disable=not show_progress) as bar:
        for depth in depths:
            for rule in rules:
                runs.append(train_plain_net(depth, rule, data, config, seed=seed, progress=bar))
    return runs


def format_summary(runs: Sequence[DepthRun], config: DepthConfig, seed: int) -> str:
    """A few lines per run: initial and final loss, when the loss first fell by 10% and 50%, val accuracy."""
    lines = [f'Plain ReLU nets on scikit-learn digits ({config.img_size} px), SGD lr {config.lr} momentum '
             f'{config.momentum} wd {config.weight_decay}, batch {config.batch_size}, {config.steps} iterations, '
             f'n = {config.init_mode}, seed {seed}. Chance-level loss ln 10 = {CHANCE_LOSS:.3f}.', '',
             '| run | initial loss | final loss | -10% at it. | -50% at it. | val acc. | verdict |',
             '|---|---|---|---|---|---|---|']
    for r in runs:
        ten, half = r.first_step_below(0.9), r.first_step_below(0.5)
        lines.append(f'| {r.label} | {r.initial_loss:.3f} | {r.final_loss:.3f} | {ten or "never"} | '
                     f'{half or "never"} | {r.val_accuracy:.1%} | {r.verdict} |')
    return '\n'.join(lines)


def plot_depth_experiment(runs: Sequence[DepthRun], path: Union[str, os.PathLike], title: str = '') -> Path:
    """Training loss vs iteration, one line per run (running mean; the raw loss faint)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    colors = {'he': 'tab:red', 'xavier': 'tab:blue'}  # the paper's colours
    depths = sorted({r.depth for r in runs})
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in runs:
        it = np.arange(1, len(r.losses) + 1)
        style = dict(color=colors.get(r.rule), linestyle='-' if r.depth == depths[-1] else '--')
        ax.plot(it, r.losses, alpha=0.15, linewidth=0.6, **style)
        ax.plot(it, r.smoothed(), linewidth=1.8, label=f'{r.label} ({r.verdict})', **style)
    ax.axhline(CHANCE_LOSS, color='gray', linewidth=0.8, linestyle=':')
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss (cross-entropy)')
    ax.set_ylim(0, CHANCE_LOSS * 1.15)
    ax.set_title(title or 'Plain ReLU nets: He vs Xavier init (paper Figures 2-3)')
    ax.legend(loc='lower left', fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def write_depth_experiment(runs: Sequence[DepthRun], out_dir: Union[str, os.PathLike], config: DepthConfig,
                           seed: int) -> Dict[str, Path]:
    """Write depth_experiment.png, summary.md and losses.csv (one column per run) into the folder ``out_dir``.

    The CLI passes a :func:`timm_prelu.outputs.finished_output_dir` work folder, so the folder appears whole or
    not at all.
    """
    out = Path(out_dir)
    paths = {'plot': out / 'depth_experiment.png', 'summary': out / 'summary.md', 'losses': out / 'losses.csv'}
    plot_depth_experiment(runs, paths['plot'])
    paths['summary'].write_text(format_summary(runs, config, seed) + '\n')
    with open(paths['losses'], 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['iteration'] + [r.label for r in runs])
        writer.writerows([i + 1] + [f'{r.losses[i]:.5f}' for r in runs] for i in range(len(runs[0].losses)))
    return paths
