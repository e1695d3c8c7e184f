"""Shared fixtures: a real image dataset (scikit-learn's digits) and one real run of upstream timm train.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The narrow PReLU-net the tests train: the paper's structure at 1/8 width and a 64-wide fc head.
TINY_MODEL = 'prelu_model_a'
TINY_KWARGS = {'width_mult': 0.125, 'fc_dim': 64}
TINY_IMG_SIZE = 32
NUM_CLASSES = 10


@pytest.fixture(scope='session')
def digits_folder(tmp_path_factory) -> Path:
    """train/ and val/ ImageFolders of 32x32 RGB digits, 30 images per class."""
    from timm_prelu.demo.datasets import make_digits_imagefolder
    root = tmp_path_factory.mktemp('digits')
    make_digits_imagefolder(root, size=TINY_IMG_SIZE, per_class=30, val_fraction=0.3, seed=0)
    return root


@pytest.fixture(scope='session')
def train_script() -> Path:
    """Upstream timm train.py, found (or downloaded once) exactly as the package finds it for users.

    Its path is then exported as $TIMM_TRAIN_SCRIPT, so the commands the tests start use the same file.
    """
    from timm_prelu.training.train_script import TRAIN_SCRIPT_ENV, find_train_script
    path = find_train_script()
    os.environ[TRAIN_SCRIPT_ENV] = str(path)
    return path


def train_py_args(data: Path, output: Path, epochs: int = 2, experiment: str = 'run') -> list:
    """Flags for one single-process CPU run of upstream train.py on the tiny model."""
    kwargs = [f'{k}={v}' for k, v in TINY_KWARGS.items()]
    return [
        '--data-dir', str(data), '--train-split', 'train', '--val-split', 'val',
        '--model', TINY_MODEL, '--model-kwargs', *kwargs, '--num-classes', str(NUM_CLASSES),
        '--img-size', str(TINY_IMG_SIZE), '-b', '16', '--epochs', str(epochs),  # 28 steps: the loss falls
        '--opt', 'sgd', '--lr', '0.02', '--momentum', '0.9', '--weight-decay', '5e-4',
        '--sched', 'plateau', '--warmup-epochs', '0', '--seed', '0',
        '--device', 'cpu', '--device-modules', 'timm_prelu', '-j', '0', '--no-prefetcher',
        '--output', str(output), '--experiment', experiment, '--log-interval', '5',
    ]


@pytest.fixture(scope='session')
def trained_run(digits_folder, train_script, tmp_path_factory) -> dict:
    """One real 2-epoch run of upstream train.py; returns where its checkpoints are and how it was built."""
    output = tmp_path_factory.mktemp('train')
    proc = subprocess.run([sys.executable, str(train_script), *train_py_args(digits_folder, output)],
                          capture_output=True, text=True, cwd=output)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {
        'dir': output / 'run', 'log': proc.stdout + proc.stderr, 'data': digits_folder,
        'model': TINY_MODEL, 'model_kwargs': dict(TINY_KWARGS), 'num_classes': NUM_CLASSES,
        'img_size': TINY_IMG_SIZE,
    }


# The narrow model A that the ONNX tests export once per session (files shared between test modules).
ONNX_NARROW = {'width_mult': 0.125, 'fc_dim': 64, 'num_classes': 10}
ONNX_LABELS = [f'class_{i}' for i in range(10)]


def narrow_a_export(tmp_path_factory):
    """The narrow model A (seed 0), freshly built, and its --split export (written once per session)."""
    import timm
    import torch
    from timm_prelu.onnx_model.export import export_onnx
    torch.manual_seed(0)
    model = timm.create_model('prelu_model_a', **ONNX_NARROW).eval()
    path = tmp_path_factory.getbasetemp() / 'narrow-a-seed0' / 'a.onnx'
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        export_onnx(model, path, split=True, label_names=ONNX_LABELS)
    return model, path


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The narrow model A with label names, and its model / backbone / head graphs (a module may override it)."""
    return narrow_a_export(tmp_path_factory)


@pytest.fixture(scope='module')
def photo():
    """A real 451 x 300 photo shipped with scikit-image."""
    from PIL import Image
    from skimage import data as skdata
    return Image.fromarray(skdata.chelsea())


@pytest.fixture(scope='module')
def one_torch_thread():
    """One torch thread for a module: the CI machine is shared and small inputs gain nothing from more."""
    import torch
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
