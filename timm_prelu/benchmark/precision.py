"""Reduced precision for CPU serving: int8 ONNX Runtime and bf16 PyTorch, as speed ratios against fp32 ONNX Runtime.

Speed: one model and input, every path timed in interleaved rounds in this process; ratio = fp32 ONNX Runtime's
median / the path's median (above 1: faster). The model's PReLU slopes are drawn per channel (seeded), as a trained
net has them, so no PReLU qualifies for the exact LeakyRelu rewrite that a freshly built net's equal slopes would
allow. int8 is calibrated on the digits images the accuracy part writes.

Accuracy: a narrow model A trained here on scikit-learn's digits (the demo's data: train / val ImageFolders), every
path scored on the val images preprocessed by timm's eval transform; the change in top-1 / top-5 is against fp32
ONNX Runtime. The int8 graph is calibrated on the train images by the code ``export-onnx --int8`` runs.

bf16 through ONNX Runtime: its CPU provider has no bfloat16 convolution or matrix multiply, so that path is reported
as unavailable; bf16 through PyTorch is reported as slow where the CPU has no AVX512-BF16 / AMX.
"""
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import TrainingError
from ..inference.precision import bf16_note, cpu_isa, native_bf16, native_int8
from .timer import interleaved

__all__ = ['precision_section', 'PRECISION_TABLES', 'precision_markdown', 'train_digits_model']

PRECISION_TABLES = {
    'precision': ('precision.csv', [
        ('path', 'path'), ('status', 'status'), ('n', 'repeats'), ('median_ms', 'latency, median (ms)'),
        ('iqr_pct', 'IQR (%)'), ('speed_vs_fp32_ort', 'speed vs fp32 ORT (x)'), ('top1', 'digits top-1 (%)'),
        ('top5', 'digits top-5 (%)'), ('top1_change', 'top-1 change (points)'), ('top5_change', 'top-5 change (points)'),
        ('top1_agreement', 'same top-1 as fp32 ORT (%)'), ('note', 'note')]),
}
BF16_ORT_REASON = ("ONNX Runtime's CPU provider has no bfloat16 convolution or matrix multiply (a bfloat16 Conv "
                   "graph is refused at load, MatMul has no CPU kernel)")
PATH_NAMES = ('fp32 ORT', 'int8 ORT', 'bf16 torch', 'fp32 torch', 'bf16 ORT')


def train_digits_model(folder: Path, model_kwargs: Dict[str, Any], img_size: int, epochs: int, seed: int = 0):
    """A narrow model A trained (SGD, momentum) on the digits ImageFolder at ``folder``/train, inputs as timm
    evaluates them; returns (model in eval mode, val inputs, val labels)."""
    import timm
    from ..init.depth import sgd_step
    from ..onnx_model.quantize import _eval_transform
    from PIL import Image
    torch.manual_seed(seed)
    model = timm.create_model('prelu_model_a', num_classes=10, **model_kwargs)
    cfg = dict(model.pretrained_cfg, input_size=(3, img_size, img_size))
    model.pretrained_cfg = cfg
    transform = _eval_transform(cfg)

    def load(split: str) -> Tuple[torch.Tensor, torch.Tensor]:
        classes = sorted(p.name for p in (folder / split).iterdir())
        xs, ys = [], []
        for label, c in enumerate(classes):
            for f in sorted((folder / split / c).glob('*.png')):
                xs.append(transform(Image.open(f).convert('RGB')))
                ys.append(label)
        return torch.stack(xs), torch.tensor(ys)

    x_train, y_train = load('train')
    x_val, y_val = load('val')
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * (len(x_train) // 32)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group['lr'] = 0.01 * (0.1 if step >= 0.75 * steps else 1.0)
        idx = torch.randint(0, len(x_train), (32,), generator=gen)
        sgd_step(opt, torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]))
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise TrainingError(f'the digits model diverged in {epochs} epochs (non-finite weights): the scores would '
                            f'mean nothing; try another seed or fewer epochs', param='epochs')
    return model.eval(), x_val.numpy(), y_val.numpy()


def _topk(logits: np.ndarray, labels: np.ndarray) -> Tuple[float, float, np.ndarray]:
    order = np.argsort(-logits, axis=1)
    top1 = 100.0 * float((order[:, 0] == labels).mean())
    top5 = 100.0 * float((order[:, :5] == labels[:, None]).any(axis=1).mean())
    return top1, top5, order[:, 0]


def _paths(model: torch.nn.Module, fp32: Path, int8: Path, threads: int) -> Dict[str, Optional[Callable]]:
    """Path name -> function from a float32 NCHW batch to float32 logits (None: unavailable here)."""
    import copy
    from ..onnx_model.runtime import OnnxModel
    from ..inference.precision import TorchBf16Backend
    from ..inference.predictor import TorchBackend
    ort32, ort8 = OnnxModel(fp32, providers='cpu', threads=threads), OnnxModel(int8, providers='cpu', threads=threads)
    torch32 = TorchBackend(copy.deepcopy(model), device='cpu')
    bf16 = TorchBf16Backend(copy.deepcopy(model), device='cpu')
    return {'fp32 ORT': ort32.run, 'int8 ORT': ort8.run, 'bf16 torch': bf16.logits, 'fp32 torch': torch32.logits,
            'bf16 ORT': None}


def _export_pair(model: torch.nn.Module, folder: Path, calibrate: Path, img_size: int, count: int) -> Tuple[Path, Path]:
    from ..onnx_model.export import export_onnx
    from ..onnx_model.quantize import export_int8
    folder.mkdir(parents=True, exist_ok=True)
    # each precision in its fastest graph: fp32 in ONNX Runtime's forms, int8 from the plain graph that quantizes
    fp32 = export_onnx(model, folder / 'model.onnx', input_size=img_size, verify=False).model
    int8 = export_int8(model, folder / 'model.int8.onnx', calibrate, count, input_size=img_size, verify=False).model
    return fp32, int8


def _per_channel_slopes(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split('.')[-2].startswith('act') and p.numel() > 1:
                p.copy_(torch.rand(p.shape, generator=gen) * 0.4 + 0.05)


def precision_section(workdir: Path, speed: Optional[Dict[str, Any]], accuracy: Dict[str, Any], repeats: int = 5,
                      budget_s: Optional[float] = None, threads: Optional[int] = None,
                      progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Time every path on ``speed``'s model and score it on the digits with ``accuracy``'s trained model.

    Args:
        workdir: Scratch folder (digits ImageFolders, exported graphs).
        speed: ``model``, ``model_kwargs``, ``img_size``, ``batch``, ``calibrate_count`` of the timed model; None:
            time the trained digits model at its own size, batch 1 (the quick profile: no further exports).
        accuracy: ``model_kwargs``, ``img_size``, ``epochs``, ``calibrate_count`` of the trained narrow model.
        repeats: Interleaved timed rounds (minimum with ``budget_s``).
        budget_s: Seconds of timing to aim for.
        threads: CPU threads for both runtimes (default: PyTorch's).
        progress: Called with the name of each step.
    """
    import timm
    from ..demo.datasets import make_digits_imagefolder
    threads = threads or torch.get_num_threads()
    step = progress or (lambda _: None)
    isa = cpu_isa()
    digits = workdir / 'digits'
    make_digits_imagefolder(digits, size=accuracy['img_size'], val_fraction=0.2, seed=0)

    step('precision: train the digits model')
    t0 = time.perf_counter()
    trained, x_val, y_val = train_digits_model(digits, accuracy['model_kwargs'], accuracy['img_size'],
                                               accuracy['epochs'])
    train_s = time.perf_counter() - t0
    fp32, int8 = _export_pair(trained, workdir / 'accuracy', digits / 'train', accuracy['img_size'],
                              accuracy['calibrate_count'])
    scores = {}
    for name, fn in _paths(trained, fp32, int8, threads).items():
        if fn is not None:
            scores[name] = _topk(np.concatenate([fn(x_val[i:i + 64]) for i in range(0, len(x_val), 64)]), y_val)

    step('precision: time the paths')
    if speed is None:
        speed = dict(model='prelu_model_a', model_kwargs=accuracy['model_kwargs'], img_size=accuracy['img_size'],
                     batch=1)
        fns = _paths(trained, fp32, int8, threads)
    else:
        torch.manual_seed(0)
        timed = timm.create_model(speed['model'], **speed['model_kwargs']).eval()
        _per_channel_slopes(timed, seed=0)
        s_fp32, s_int8 = _export_pair(timed, workdir / 'speed', digits / 'val', speed['img_size'],
                                      speed['calibrate_count'])
        fns = _paths(timed, s_fp32, s_int8, threads)
    x = np.random.default_rng(0).standard_normal((speed['batch'], 3, speed['img_size'], speed['img_size'])) \
        .astype(np.float32)
    stats = interleaved({k: (lambda f=f: f(x)) for k, f in fns.items() if f is not None}, repeats=repeats,
                        budget_s=budget_s)
    base = stats['fp32 ORT'].median
    ref = scores['fp32 ORT']
    rows: List[Dict[str, Any]] = []
    for name in PATH_NAMES:
        row: Dict[str, Any] = dict(path=name)
        if name in stats:
            s = stats[name]
            row.update(status='ok', n=s.n, median_ms=s.median * 1e3, iqr_pct=s.iqr_pct,
                       speed_vs_fp32_ort=base / s.median)
        else:
            row.update(status='unavailable', note=BF16_ORT_REASON)
        if name in scores:
            top1, top5, pred = scores[name]
            row.update(top1=top1, top5=top5, top1_change=top1 - ref[0], top5_change=top5 - ref[1],
                       top1_agreement=100.0 * float((pred == ref[2]).mean()))
        if name == 'bf16 torch' and not native_bf16(isa):
            row['status'], row['note'] = 'slow', bf16_note(isa)
        if name == 'int8 ORT' and not native_int8(isa):
            row['note'] = 'no VNNI: int8 weights use 7 bits (ONNX Runtime advice against saturation)'
        rows.append(row)
    from .machine import model_label
    return dict(rows=rows, isa=isa, threads=threads, train_s=train_s, val_images=int(len(y_val)),
                speed_model=model_label(speed['model'], speed['model_kwargs']), speed_img=speed['img_size'],
                batch=speed['batch'], accuracy_model=model_label('prelu_model_a', accuracy['model_kwargs']),
                epochs=accuracy['epochs'], calibrate_count=accuracy['calibrate_count'])


def precision_markdown(section: Dict[str, Any], render_table: Callable[[str, List[Dict]], str]) -> List[str]:
    """The report's reduced-precision section."""
    isa = ', '.join(k for k, v in section['isa'].items() if v) or 'none of the listed flags'
    return [
        '## 9. Reduced precision for CPU serving', '',
        f'CPU instruction sets: {isa}. Speed: {section["speed_model"]}, {section["speed_img"]} x '
        f'{section["speed_img"]}, batch {section["batch"]}, {section["threads"]} thread(s), interleaved rounds; '
        'ratio = fp32 ONNX Runtime median / the path\'s median (per-channel PReLU slopes, so PReLUs run in float '
        'between DequantizeLinear / QuantizeLinear in the int8 graph). Accuracy: '
        f'{section["accuracy_model"]} trained {section["epochs"]} epochs on the digits here '
        f'({section["train_s"]:.0f} s), scored on {section["val_images"]} val images; int8 calibrated on '
        f'{section["calibrate_count"]} train images. Target: at least 2x at no more than 0.5 point top-1 loss.', '',
        render_table('precision', section['rows'])]
