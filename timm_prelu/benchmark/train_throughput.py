"""GPU only: training throughput of upstream timm ``train.py`` (``--amp --channels-last``), model A beside vgg19.

One short run per model on the same ImageFolder (scikit-learn's digits upsampled to the input size, written
once); the figure is the median of the images/s train.py itself logs, leaving out its first log line (cuDNN
autotuning, allocator warm-up, worker start).
"""
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import TrainingError

__all__ = ['train_command', 'parse_train_rates', 'train_throughput']

# train.py logs e.g. "Time: 0.116s,  551.21/s  (0.121s,  528.93/s)": the last update's images/s (its running
# average in brackets) every --log-interval updates
_RATE = re.compile(r'Time:\s*[\d.]+s,\s*([\d.]+)/s\s+\(')


def parse_train_rates(log: str) -> List[float]:
    """Images/s of each train.py log line of the training loop, in order."""
    return [float(m.group(1)) for m in _RATE.finditer(log)]


def train_command(script: Path, data: Path, output: Path, model: str, batch_size: int, img_size: int,
                  epochs: int, device: str = 'cuda', num_classes: int = 10, workers: int = 8,
                  log_interval: int = 2) -> List[str]:
    """The train.py command line of one throughput run."""
    return [
        sys.executable, str(script), '--data-dir', str(data), '--train-split', 'train', '--val-split', 'val',
        '--model', model, '--num-classes', str(num_classes), '--img-size', str(img_size), '-b', str(batch_size),
        '--epochs', str(epochs), '--opt', 'sgd', '--lr', '0.01', '--momentum', '0.9', '--weight-decay', '5e-4',
        '--sched', 'step', '--warmup-epochs', '0', '--amp', '--channels-last', '--synchronize-step',
        '--device', device,
        '--device-modules', 'timm_prelu', '-j', str(workers), '--log-interval', str(log_interval),
        '--output', str(output), '--experiment', model, '--seed', '0',
    ]


def train_throughput(
        workdir: Path,
        models: Sequence[str] = ('prelu_model_a', 'vgg19'),
        device: str = 'cuda',
        batch_size: int = 64,
        img_size: int = 224,
        epochs: int = 2,
        script: Optional[Path] = None,
        timeout_s: float = 600,
) -> List[Dict]:
    """One short upstream train.py run per model; returns images/s (median of the logged rates) per model."""
    from ..demo.datasets import make_digits_imagefolder
    from ..processes import run_captured
    from ..training.launcher import find_train_script
    script = find_train_script(script)
    data = Path(workdir) / 'digits'
    if not (data / 'train').is_dir():
        make_digits_imagefolder(data, size=img_size)
    rows = []
    for model in models:
        cmd = train_command(script, data, Path(workdir) / 'runs', model, batch_size, img_size, epochs, device)
        start = time.perf_counter()
        proc = run_captured(cmd, timeout_s=timeout_s, cwd=workdir)  # stopped with its loader workers if we are
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise TrainingError(f'train.py failed for {model} (exit {proc.returncode}): {log.strip()[-400:]}')
        rates = parse_train_rates(log)
        if len(rates) < 2:
            raise TrainingError(f'train.py logged {len(rates)} training rates for {model}: too few to measure; '
                            f'raise the epochs or lower --log-interval')
        steady = rates[1:]
        rows.append(dict(model=model, batch=batch_size, img_size=img_size, flags='--amp --channels-last',
                         log_lines=len(steady), images_per_s=statistics.median(steady), min_images_per_s=min(steady),
                         max_images_per_s=max(steady), wall_s=time.perf_counter() - start))
    return rows
