"""A CPU analogue of the paper's small-model ablation (He et al., ICCV 2015, Tables 1 and 2): the model, the data and
the training runs (the statistics and the report are in ``ablation_report``).

The paper trains its 14-layer small model (model E of He & Sun 2014, *Convolutional Neural Networks at Constrained
Time Cost*) three times, with ReLU, channel-shared PReLU and channel-wise PReLU, and reports 10-view top-1 / top-5
error (Table 2: 33.82 / 13.34, 32.71 / 12.87, 32.64 / 12.75) and the learned slopes per layer (Table 1: larger in
conv1, small in the deep layers and the fc layers). Here a CPU analogue of model E trains the three variants on the
same data, batches, initial weights' seeds and step schedule, over several paired seeds, so the gap between them
can be read against its spread.

Model E: conv1 7x7, 64, /2; pool 3x3, /3; conv21-24 2x2, 128; pool 2x2, /2; conv31-36 2x2, 256; SPP {6, 3, 2, 1};
fc1 4096, fc2 4096, fc3 classes; a rectifier after every conv, fc1 and fc2; dropout 0.5 after fc1 and fc2.
Kept: every layer, kernel, stride and pool; the three rectifiers (slopes initialised to 0.25, no weight decay on
them); He init, backward case (Eqn. 14, n = k^2 d) for the convs as the paper trained them; SGD with momentum 0.9
and weight decay 5e-4; lr 1e-2 -> 1e-3 -> 1e-4 at the same iterations for every variant (the paper's fair
comparison); training on random crops of images resized to the 256/224 ratio, with random horizontal flips; testing
with 10 views (four corners and the centre, and their flips, softmax averaged). Training and testing as in the
paper's section 3 (Implementation Details).

Scaled down, each for CPU minutes:

- Data (``--data``): ``photos`` (the default), 20 classes: which of the photos scikit-image and scikit-learn ship a
  patch comes from, with train and test patches cut from disjoint squares of each photo
  (:func:`timm_prelu.demo.datasets.photo_patches`), so the test asks for generalisation to unseen parts of a
  photo; ``digits``, scikit-learn's 1,797 8x8 gray digits (80 / 20 split by seed), which every variant nearly
  solves.
- Images: 55 px patches or upsampled digits, crops of 48 px (the paper: 256 px, crops of 224; 48/55 is 224/256).
  The maps are then 24, 8 and 4 px (the paper's 112, 37 and 18).
- Widths: conv1 16, conv2x 32, conv3x 64 (a quarter of 64 / 128 / 256); fc1 and fc2 128 (not 4096).
- 2x2 convs: the paper does not give their padding; here they alternate padding 1 and 0, so each pair keeps the
  map size (the paper's table has one size per stage) and the bins stay centred.
- SPP levels capped at the 4 px last map: {4, 3, 2, 1} (finer bins than the map would repeat cells).
- fc layers: He init, forward case (n = fan-in), not the paper's std 0.01 / 0.001, which it chose for unnormalised
  pixels (range about +-128); these images are normalised to zero mean and unit variance.
- Schedule: 1,000 iterations on photos, 600 on digits, at batch 64 (the paper: 75 epochs of ImageNet at batch
  128), lr steps at 60% and 85% of the run. A run whose loss stops being finite ends there and is reported as
  diverged; its seed then leaves the statistics (lr 0.01 diverged a 1,500-iteration channel-shared run on photos,
  once, just before its first lr step).
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..layers import create_rectifier, rectifier_slope
from ..progress import progress as progress_bar
from .depth import sgd_step, shuffled_batches

__all__ = ['VARIANTS', 'DATASETS', 'LAYERS', 'SmallNet', 'AblationConfig', 'AblationRun', 'TaskData', 'load_task',
           'train_small_net', 'ten_view_scores', 'run_ablation', 'final_loss']

# The paper's Table 2 rows, in its order: model act -> label.
VARIANTS: Dict[str, str] = {'relu': 'ReLU', 'prelu_shared': 'PReLU channel-shared', 'prelu': 'PReLU channel-wise'}
# --data -> what it is, for the report.
DATASETS: Dict[str, str] = {
    'photos': 'which-photo patches from the photos scikit-image and scikit-learn ship',
    'digits': "scikit-learn's 8x8 digits",
}
LAYERS = ('conv1', 'conv21', 'conv22', 'conv23', 'conv24',
          'conv31', 'conv32', 'conv33', 'conv34', 'conv35', 'conv36', 'fc1', 'fc2')


class SmallNet(nn.Module):
    """A CPU analogue of model E of He & Sun 2014 (the paper's 14-layer small model): every layer, narrow; layers
    named as in the paper's Table 1."""

    def __init__(self, act: str = 'prelu', in_chans: int = 1, num_classes: int = 10, width: int = 16,
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
        for name, c in chs.items():
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
    """Everything a run depends on besides the rectifier and the seed. ``short_side`` and the per-photo counts
    apply to ``data='photos'`` only; use :meth:`default` or :meth:`quick` for a data set's own schedule."""
    data: str = 'photos'
    steps: int = 1000
    lr: float = 0.01
    lr_steps: Tuple[float, float] = (0.6, 0.85)  # fractions of the run where the lr drops 10x
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    resize: int = 55  # the paper's 256: the patch or digit size
    crop: int = 48  # the paper's 224
    width: int = 16
    fc_dim: int = 128
    short_side: int = 256  # photos: each resized to this shorter side before patches are cut
    train_per_photo: int = 256
    test_per_photo: int = 64
    seeds: Tuple[int, ...] = tuple(range(8))

    @classmethod
    def default(cls, data: str = 'photos', **kwargs) -> 'AblationConfig':
        """The full run on ``data``."""
        _check_data(data)
        own = {'photos': {}, 'digits': dict(steps=600, seeds=(0, 1, 2))}[data]
        return cls(**{'data': data, **own, **kwargs})

    @classmethod
    def quick(cls, data: str = 'photos', **kwargs) -> 'AblationConfig':
        """A short schedule of a narrower model that still learns well above chance: what CI runs."""
        _check_data(data)
        own = {'photos': dict(steps=300, lr_steps=(0.75, 0.9), width=8, fc_dim=64, train_per_photo=128,
                              test_per_photo=32, seeds=(0, 1)),
               'digits': dict(steps=200, lr_steps=(0.75, 0.9), width=8, fc_dim=64, seeds=(0, 1, 2))}[data]
        return cls(**{'data': data, **own, **kwargs})


def _check_data(data: str) -> None:
    if data not in DATASETS:
        raise ConfigError(f'unknown data set {data!r}: choose from {list(DATASETS)}', param='data')


@dataclass
class AblationRun:
    """One training run: per-iteration loss, 10-view test errors and the learned slopes per layer."""
    variant: str
    seed: int
    num_classes: int = 10
    losses: List[float] = field(default_factory=list)
    top1_err: float = float('nan')
    top5_err: float = float('nan')
    slopes: List[float] = field(default_factory=list)
    diverged_at: Optional[int] = None  # the iteration whose loss was not finite; training stopped there


def final_loss(run: AblationRun) -> float:
    """Mean training loss over the last tenth of the run (at least 10 iterations): dropout on, random crops."""
    return float(np.mean(run.losses[-max(10, len(run.losses) // 10):]))


@dataclass
class TaskData:
    """Normalised (N, C, H, W) train and test images with their labels, and the class names."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: List[str]


def load_task(config: AblationConfig, seed: int) -> TaskData:
    """``config.data`` at ``config.resize`` px for ``seed``: the digits split 80 / 20 by the seed (the depth
    experiment's data), or the photo patches cut at the seed's random places, normalised per channel by the
    training images' mean and sd."""
    _check_data(config.data)
    try:
        if config.data == 'digits':
            from .depth import digits_tensors
            return TaskData(*digits_tensors(config.resize, seed=seed), classes=[str(d) for d in range(10)])
        from ..demo.datasets import photo_patches
        d = photo_patches(config.resize, config.short_side, config.train_per_photo, config.test_per_photo, seed)
    except ImportError as e:
        other = 'digits' if config.data == 'photos' else 'photos'
        raise ConfigError(f'{e} (or choose the {other} data set)', param='data') from e
    except ValueError as e:
        raise ConfigError(str(e), param='resize') from e
    x_train, x_test = (torch.from_numpy(d[k]).permute(0, 3, 1, 2).float() / 255.0 for k in ('x_train', 'x_test'))
    mean, std = x_train.mean(dim=(0, 2, 3), keepdim=True), x_train.std(dim=(0, 2, 3), keepdim=True)
    return TaskData((x_train - mean) / std, torch.from_numpy(d['y_train']), (x_test - mean) / std,
                    torch.from_numpy(d['y_test']), list(d['names']))


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


def ten_view_scores(model: nn.Module, x: torch.Tensor, crop: int, batch_size: int = 256) -> torch.Tensor:
    """Softmax averaged over 10 views: the four corner crops and the centre crop, and their horizontal flips."""
    h, w = x.shape[-2:]
    if crop > min(h, w):
        raise ConfigError(f'crop {crop} px is larger than the {h}x{w} px images', param='crop')
    top, left = (h - crop) // 2, (w - crop) // 2
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (top, left)]
    parts = []
    with torch.no_grad():
        for chunk in x.split(batch_size):
            probs = 0
            for y0, x0 in corners:
                view = chunk[..., y0:y0 + crop, x0:x0 + crop]
                for v in (view, view.flip(-1)):
                    probs = probs + F.softmax(model(v), dim=1)
            parts.append(probs / 10)
    return torch.cat(parts)


def _lr_at(step: int, config: AblationConfig) -> float:
    drops = sum(step >= int(f * config.steps) for f in config.lr_steps)
    return config.lr * 0.1 ** drops


def train_small_net(variant: str, data: TaskData, config: AblationConfig, seed: int, progress=None) -> AblationRun:
    """Train ``SmallNet(act=variant)`` on ``data``; weights, batches, crops and dropout depend on ``seed`` only, so
    the variants of one seed are paired."""
    if variant not in VARIANTS:
        raise ConfigError(f'unknown variant {variant!r}: choose from {list(VARIANTS)}', param='variant')
    model = SmallNet(act=variant, in_chans=data.x_train.shape[1], num_classes=len(data.classes),
                     width=config.width, fc_dim=config.fc_dim)
    model.init_weights(torch.Generator().manual_seed(seed))
    slopes = [p for n, p in model.named_parameters() if n.startswith('act_')]
    decayed = [p for n, p in model.named_parameters() if not n.startswith('act_') and n.endswith('weight')]
    others = [p for n, p in model.named_parameters() if not n.startswith('act_') and not n.endswith('weight')]
    optimizer = torch.optim.SGD([{'params': decayed, 'weight_decay': config.weight_decay},
                                 {'params': others + slopes, 'weight_decay': 0.0}],  # no decay on slopes, biases
                                lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(seed)  # the same batches, crops and flips for every variant
    torch.manual_seed(seed)  # dropout masks
    run = AblationRun(variant, seed, len(data.classes))
    model.train()
    for step, idx in zip(range(config.steps), shuffled_batches(len(data.x_train), config.batch_size, gen)):
        for group in optimizer.param_groups:
            group['lr'] = _lr_at(step, config)
        loss = F.cross_entropy(model(_random_crops(data.x_train[idx], config.crop, gen)), data.y_train[idx])
        run.losses.append(sgd_step(optimizer, loss))
        if progress is not None:
            progress.update(1)
        if not math.isfinite(run.losses[-1]):
            run.diverged_at = step
            if progress is not None:
                progress.update(config.steps - step - 1)
            return run
    model.eval()
    probs = ten_view_scores(model, data.x_test, config.crop)
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
    run.top1_err = 100.0 * float((top5[:, 0] != data.y_test).float().mean())
    run.top5_err = 100.0 * float((top5 != data.y_test[:, None]).all(dim=1).float().mean())
    run.slopes = model.slopes()
    return run


def run_ablation(config: AblationConfig = AblationConfig(), variants: Sequence[str] = tuple(VARIANTS),
                 show_progress: bool = True) -> List[AblationRun]:
    """Train every variant at every seed of ``config``; a seed fixes the data, weights, batches and crops."""
    if config.steps < 50:
        raise ConfigError(f'steps {config.steps} is too few to train: use at least 50', param='steps')
    if len(set(config.seeds)) < 2:
        raise ConfigError(f'a spread needs at least 2 different seeds, got {list(config.seeds)}', param='seeds')
    runs = []
    with progress_bar(total=config.steps * len(variants) * len(config.seeds), desc='ablation', unit='it',
                      disable=not show_progress) as bar:
        for seed in config.seeds:
            data = load_task(config, seed)
            for variant in variants:
                bar.set_postfix_str(f'seed {seed}, {variant}')
                runs.append(train_small_net(variant, data, config, seed, progress=bar))
    return runs
