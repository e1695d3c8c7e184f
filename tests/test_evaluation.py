"""`export-onnx` + `eval` end to end on the digits ImageFolder: a Table-6-shaped table, recomputable predictions."""
import argparse
import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import timm
import timm_prelu  # noqa: F401
from timm_prelu.cli import main
from timm_prelu.errors import UserError
from timm_prelu.inference.evaluation import error_table, evaluate_folder, format_table6, table_from_predictions
from timm_prelu.inference.predictor import MultiScalePredictor, OnnxBackend, TorchBackend
from timm_prelu.onnx_model.export import resolve_model

KWARGS = {'width_mult': 0.125, 'fc_dim': 64}
VIEWS = ('full', 'center', 'dense')


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope='module')
def checkpoint(digits_folder, tmp_path_factory):
    """A checkpoint in timm train.py's format (state_dict + its argparse args) of a narrow model A."""
    torch.manual_seed(7)
    model = timm.create_model('prelu_model_a', num_classes=10, **KWARGS)
    args = argparse.Namespace(model='prelu_model_a', model_kwargs=dict(KWARGS), num_classes=10, img_size=32,
                              input_size=None, in_chans=None, mean=None, std=None, interpolation='', crop_pct=None,
                              data_dir=str(digits_folder), train_split='train', dataset='')
    path = tmp_path_factory.mktemp('run') / 'model_best.pth.tar'
    torch.save({'epoch': 1, 'arch': 'prelu_model_a', 'state_dict': model.state_dict(), 'args': args,
                'metric': 20.0, 'version': 2}, path)
    return path


@pytest.fixture(scope='module')
def val_folder(digits_folder, tmp_path_factory):
    """The digits val split plus a corrupt PNG, a text file and a grayscale image."""
    root = tmp_path_factory.mktemp('val') / 'val'
    shutil.copytree(digits_folder / 'val', root)
    good = sorted((root / '0').glob('*.png'))[0].read_bytes()
    (root / '0' / '000_broken.png').write_bytes(good[:len(good) // 2])
    (root / '1' / 'README.txt').write_text('collected by hand')
    first2 = sorted((root / '2').glob('*.png'))[0]
    Image.open(first2).convert('L').save(first2)
    return root


def _rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_export_and_eval_cli(checkpoint, val_folder, digits_folder, tmp_path, capsys):
    onnx_path = tmp_path / 'run.onnx'
    assert main(['export-onnx', str(checkpoint), '-o', str(onnx_path), '--split',
                 '--labels', str(digits_folder / 'train')]) == 0
    out = capsys.readouterr().out
    assert 'prelu_model_a (10 classes, float32' in out and 'from checkpoint model_best.pth.tar' in out
    assert 'input 32x32' in out and 'labels: yes' in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ['run.backbone.onnx', 'run.head.onnx', 'run.onnx']

    out_dir = tmp_path / 'eval'
    assert main(['eval', '--data', str(val_folder), '--onnx', str(onnx_path), '--scales', '32', '48',
                 '--views', *VIEWS, '--threads', '1', '--out', str(out_dir)]) == 0
    captured = capsys.readouterr()
    assert 'eval: 100%' in captured.err  # the progress bar
    out = captured.out
    assert 'ExecutionProvider' in out and 'window 2x2 cells' in out  # 32 px training size / 16
    assert '| scale s | full top-1 | full top-5 | center top-1 | center top-5 | dense top-1 | dense top-5 |' in out
    assert '90 images evaluated, 2 skipped' in out
    assert sorted(p.name for p in out_dir.iterdir()) == [
        'predictions.csv', 'predictions.npz', 'skipped.txt', 'table.csv', 'table.md', 'table.png']
    skipped = (out_dir / 'skipped.txt').read_text()
    assert '000_broken.png' in skipped and 'corrupt or truncated' in skipped
    assert 'README.txt' in skipped and 'not an image file type' in skipped

    rows = _rows(out_dir / 'table.csv')
    assert [(r['view'], r['scale']) for r in rows] == [(v, s) for v in VIEWS for s in ('32', '48', 'multi-scale')]
    recomputed = table_from_predictions(out_dir / 'predictions.npz')
    for row, again in zip(rows, recomputed):
        assert float(row['top1_err']) == pytest.approx(again['top1_err'], abs=1e-4)
        assert float(row['top5_err']) == pytest.approx(again['top5_err'], abs=1e-4)
        assert int(row['images']) == 90
    with np.load(out_dir / 'predictions.npz') as z:
        assert z['topk_idx'].shape == (90, 3, 3, 5) and set(z['targets']) == set(range(10))
    assert (out_dir / 'table.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (out_dir / 'table.md').read_text().startswith('| scale s |')

    # the same protocol on the PyTorch model gives the same table (at most one image apart from float noise)
    model, _ = resolve_model(checkpoint)
    torch_rows = evaluate_folder(MultiScalePredictor(TorchBackend(model), scales=(32, 48), views=VIEWS),
                                 val_folder, progress=False).rows
    for row, t in zip(rows, torch_rows):
        assert abs(float(row['top1_err']) - t['top1_err']) <= 100 / 90 + 1e-6
        assert abs(float(row['top5_err']) - t['top5_err']) <= 100 / 90 + 1e-6

    # a folder with some of the classes is matched to the model's classes by name
    subset = tmp_path / 'subset'
    for c in ('3', '7'):
        (subset / c).mkdir(parents=True)
        for p in sorted((val_folder / c).glob('*.png'))[:2]:
            shutil.copy(p, subset / c)
    predictor = MultiScalePredictor(OnnxBackend(onnx_path, threads=1), scales=(32,), views='full')
    result = evaluate_folder(predictor, subset, out=tmp_path / 'subset-eval', progress=False)
    with np.load(tmp_path / 'subset-eval' / 'predictions.npz') as z:
        assert z['targets'].tolist() == [3, 3, 7, 7]
    assert result.summary() == '4 images evaluated, 0 skipped'


def test_error_table_and_table6_layout():
    # 4 images, 1 view, 2 scales (+ combined); top-5 lists
    targets = np.array([0, 1, 2, 3])
    topk = np.zeros((4, 1, 3, 5), dtype=np.int32) + 9
    topk[0, 0, :, 0] = 0          # image 0: top-1 right at every scale
    topk[1, 0, 0, 3] = 1          # image 1: top-5 right only at the first scale
    topk[2, 0, 2, 0] = 2          # image 2: top-1 right only in the combination
    rows = error_table(topk, targets, ['dense'], [256, 384])
    assert [(r['scale'], r['top1_err'], r['top5_err']) for r in rows] == [
        ('256', 75.0, 50.0), ('384', 75.0, 75.0), ('multi-scale', 50.0, 50.0)]
    table = format_table6(rows).splitlines()
    assert table[0] == '| scale s | dense top-1 | dense top-5 |'
    assert table[2:] == ['| 256 | 75.00 | 50.00 |', '| 384 | 75.00 | 75.00 |', '| multi-scale | 50.00 | 50.00 |']


def test_bad_folders(tmp_path):
    predictor = None  # the folder is checked before any model runs
    with pytest.raises(UserError, match='no such folder'):
        evaluate_folder(predictor, tmp_path / 'missing')
    (tmp_path / 'empty' / 'cls').mkdir(parents=True)
    (tmp_path / 'empty' / 'cls' / 'a.txt').write_text('x')
    with pytest.raises(UserError, match='no images found'):
        evaluate_folder(predictor, tmp_path / 'empty')
