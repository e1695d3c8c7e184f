"""`export-onnx` + `eval` end to end on the digits ImageFolder: the paper's Tables 4, 5 and 6 in its layout (with its
figures beside the rows whose setup matches), recomputable predictions."""
import argparse
import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import timm
import timm_prelu  # noqa: F401
from timm_prelu.cli import main
from timm_prelu.errors import UserError
from timm_prelu.inference.evaluation import error_table, evaluate_folder, table_from_predictions
from timm_prelu.inference.predictor import MultiScalePredictor, OnnxBackend, TorchBackend
from timm_prelu.inference.tables import (
    PAPER_TABLE4, PAPER_TABLE5, PAPER_TABLE6, EvalSetup, tables_markdown, twin_table4_markdown)
from timm_prelu.onnx_model.export import resolve_model
from timm_prelu.outputs import MARKER_NAME

KWARGS = {'width_mult': 0.125, 'fc_dim': 64}
VIEWS = ('full', 'center', 'dense', 'ten_crop')


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
    stages = [line for line in out.splitlines() if line.startswith('export: ')]  # shown as they start
    assert stages[0] == 'export: loading the model' and len(stages) == 9  # load, 2 exports, 3 x (write, check)
    assert 'export: checking the head graph in ONNX Runtime against PyTorch' in stages
    parity = re.search(r'^parity: max \|ONNX Runtime - PyTorch\| of each graph on a random batch: '
                       r'model (\S+), backbone (\S+), head (\S+)$', out, flags=re.M)
    assert parity and all(0 <= float(v) <= 1e-4 for v in parity.groups()), out

    out_dir = tmp_path / 'eval'
    assert main(['eval', '--data', str(val_folder), '--onnx', str(onnx_path), '--scales', '32', '48',
                 '--views', *VIEWS, '--threads', '1', '--out', str(out_dir)]) == 0
    captured = capsys.readouterr()
    assert 'eval: 100%' in captured.err  # the progress bar
    out = captured.out
    assert 'ExecutionProvider' in out and 'window 2x2 cells' in out  # 32 px training size / 16
    assert 'crop 32x32' in out
    assert '### Paper Table 4 layout: top-1 / top-5 error (%) at each test scale, prelu_model_a (PReLU)' in out
    assert '| scale s | views | top-1 | top-5 |' in out and '| 48 | dense + flips |' in out
    assert '### Paper Table 5 layout: single-model 10-view testing' in out
    assert '| model | scale s | crop | top-1 | top-5 |' in out and '| prelu_model_a (PReLU) | 32 | 32x32 |' in out
    assert '### Paper Table 6 layout: single-model multi-scale combination' in out
    assert '| prelu_model_a (PReLU) | dense + flips | 32, 48 |' in out
    # a narrow model on 10 classes: the paper's figures do not describe it
    assert "Paper figures: none comparable: the model is not one of the paper's networks at full size" in out
    assert 'paper top-1' not in out
    assert '90 images evaluated, 2 skipped' in out
    assert sorted(p.name for p in out_dir.iterdir()) == [
        MARKER_NAME, 'class_to_idx.json', 'predictions.csv', 'predictions.npz', 'skipped.txt', 'table.csv', 'table.md',
        'table.png']
    # image paths relative to the ImageFolder, which the table's footer names
    listed = [r['path'] for r in _rows(out_dir / 'predictions.csv')]
    assert len(listed) == 90 and all(not Path(p).is_absolute() and (val_folder / p).is_file() for p in listed)
    assert f'images of {val_folder}' in (out_dir / 'table.md').read_text()
    skipped = (out_dir / 'skipped.txt').read_text()
    assert '0/000_broken.png\t' in skipped and 'corrupt or truncated' in skipped and str(val_folder) not in skipped
    assert 'README.txt' in skipped and 'not an image file type' in skipped

    rows = _rows(out_dir / 'table.csv')
    assert [(r['view'], r['scale']) for r in rows] == [(v, s) for v in VIEWS for s in ('32', '48', 'multi-scale')]
    assert [r['table'] for r in rows] == ['Table 4', 'Table 4', 'Table 6'] * 3 + ['Table 5', 'Table 5', 'Table 6']
    recomputed = table_from_predictions(out_dir / 'predictions.npz')
    for row, again in zip(rows, recomputed):
        assert float(row['top1_err']) == pytest.approx(again['top1_err'], abs=1e-4)
        assert float(row['top5_err']) == pytest.approx(again['top5_err'], abs=1e-4)
        assert int(row['images']) == 90
    with np.load(out_dir / 'predictions.npz') as z:
        assert z['topk_idx'].shape == (90, 4, 3, 5) and set(z['targets']) == set(range(10))
    assert (out_dir / 'table.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (out_dir / 'table.md').read_text().startswith('### Paper Table 4 layout')

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


def _rows_256_384():
    """Error rows of 4 images, views dense and ten_crop, scales 256 and 384 (+ combined), computed by hand."""
    targets = np.array([0, 1, 2, 3])
    topk = np.zeros((4, 2, 3, 5), dtype=np.int32) + 9
    topk[0, :, :, 0] = 0          # image 0: top-1 right everywhere
    topk[1, :, 0, 3] = 1          # image 1: top-5 right only at the first scale
    topk[2, :, 2, 0] = 2          # image 2: top-1 right only in the combination
    return error_table(topk, targets, ['dense', 'ten_crop'], [256, 384])


def _setup(**kw):
    base = dict(architecture='prelu_model_a', act='prelu', paper_network=True, num_classes=1000,
                data_classes=1000, scales=(256, 384), flip=True, window=(14, 14), crop_size=(224, 224))
    return EvalSetup(**{**base, **kw})


def test_error_table_rows_name_their_paper_table():
    rows = _rows_256_384()
    assert [(r['view'], r['scale'], r['top1_err'], r['top5_err'], r['table']) for r in rows] == [
        ('dense', '256', 75.0, 50.0, 'Table 4'), ('dense', '384', 75.0, 75.0, 'Table 4'),
        ('dense', 'multi-scale', 50.0, 50.0, 'Table 6'),
        ('ten_crop', '256', 75.0, 50.0, 'Table 5'), ('ten_crop', '384', 75.0, 75.0, 'Table 5'),
        ('ten_crop', 'multi-scale', 50.0, 50.0, 'Table 6')]


def test_tables_print_the_papers_figures_where_the_setup_matches():
    text = tables_markdown(_rows_256_384(), _setup())
    # Table 4: the paper's model A PReLU rows (dense views + flips at s = 256, 384)
    assert '| scale s | views | top-1 | top-5 | paper top-1 | paper top-5 |' in text
    assert '| 256 | dense + flips | 75.00 | 50.00 | 25.81 | 8.08 |' in text
    assert '| 384 | dense + flips | 75.00 | 75.00 | 24.20 | 7.03 |' in text
    # Table 5: the paper's 10-view figure for A PReLU beside the s = 256 row only
    assert '| model | scale s | crop | top-1 | top-5 | paper top-1 | paper top-5 |' in text
    assert '| prelu_model_a (PReLU) | 256 | 224x224 | 75.00 | 50.00 | 25.59 | 8.23 |' in text
    assert '| prelu_model_a (PReLU) | 384 | 224x224 | 75.00 | 75.00 | - | - |' in text
    assert 'Paper figures beside the s = 256 rows only: a reading' in text
    # Table 6: the paper's single-model multi-scale figure for A PReLU on the dense row only
    assert '| prelu_model_a (PReLU) | dense + flips | 256, 384 | 50.00 | 50.00 | 22.97 | 6.28 |' in text
    assert '| prelu_model_a (PReLU) | 10-view | 256, 384 | 50.00 | 50.00 | - | - |' in text
    assert "Scales 256, 384: this project's choice; the paper combines scales \"as in SPP-net\"" in text
    assert "equal weight per scale: this project's choice" in text
    assert text.index('Paper Table 4') < text.index('Paper Table 5') < text.index('Paper Table 6')

    relu_c = tables_markdown(_rows_256_384(), _setup(architecture='prelu_model_c', act='relu'))
    assert 'paper top-1' not in relu_c  # the paper has no C ReLU row
    relu_a = tables_markdown(_rows_256_384(), _setup(act='relu'))
    assert '| 256 | dense + flips | 75.00 | 50.00 | 26.25 | 8.25 |' in relu_a and '| 24.02 | 6.51 |' in relu_a
    b = tables_markdown(_rows_256_384(), _setup(architecture='prelu_model_b'))
    assert '| 22.85 | 6.27 |' in b and '25.81' not in b  # Table 6 has B; Table 4 is model A only


# The paper's figures, typed here from its text (He et al. 2015): (top-1, top-5) error % on ImageNet 2012 val.
PAPER = {
    'Table 4': {  # model A, dense multi-view with flips, per scale s
        ('prelu_model_a', 'relu'): {256: (26.25, 8.25), 384: (24.77, 7.26), 480: (25.46, 7.63)},
        ('prelu_model_a', 'prelu'): {256: (25.81, 8.08), 384: (24.20, 7.03), 480: (24.83, 7.39)},
    },
    'Table 5': {  # single model, 10-view
        ('prelu_model_a', 'relu'): (26.48, 8.59), ('prelu_model_a', 'prelu'): (25.59, 8.23),
        ('prelu_model_b', 'prelu'): (25.53, 8.13), ('prelu_model_c', 'prelu'): (24.27, 7.38),
    },
    'Table 6': {  # single model, multi-scale
        ('prelu_model_a', 'relu'): (24.02, 6.51), ('prelu_model_a', 'prelu'): (22.97, 6.28),
        ('prelu_model_b', 'prelu'): (22.85, 6.27), ('prelu_model_c', 'prelu'): (21.59, 5.71),
    },
}


def test_every_paper_figure_is_the_papers():
    """Each cell the tables carry equals the paper's, and each is printed in its table's layout."""
    assert PAPER_TABLE4 == PAPER['Table 4'] and PAPER_TABLE5 == PAPER['Table 5'] and PAPER_TABLE6 == PAPER['Table 6']
    rows = error_table(np.zeros((1, 2, 4, 5), dtype=np.int32), np.array([0]), ['dense', 'ten_crop'], [256, 384, 480])
    for (arch, act) in {**PAPER['Table 4'], **PAPER['Table 5'], **PAPER['Table 6']}:
        text = tables_markdown(rows, _setup(architecture=arch, act=act, scales=(256, 384, 480)))
        model = f"{arch} ({'ReLU' if act == 'relu' else 'PReLU'})"
        for scale, (top1, top5) in PAPER['Table 4'].get((arch, act), {}).items():
            assert f'| {scale} | dense + flips | 0.00 | 0.00 | {top1:.2f} | {top5:.2f} |' in text
        if (arch, act) in PAPER['Table 5']:
            top1, top5 = PAPER['Table 5'][arch, act]
            assert f'| {model} | 256 | 224x224 | 0.00 | 0.00 | {top1:.2f} | {top5:.2f} |' in text
            assert f'| {model} | 384 | 224x224 | 0.00 | 0.00 | - | - |' in text
        top1, top5 = PAPER['Table 6'][arch, act]
        assert f'| {model} | dense + flips | 256, 384, 480 | 0.00 | 0.00 | {top1:.2f} | {top5:.2f} |' in text


@pytest.mark.parametrize('change, why', [
    (dict(paper_network=False), "not one of the paper's networks"),
    (dict(num_classes=10, data_classes=10), 'the paper evaluates 1000 ImageNet classes; here 10'),
    (dict(data_classes=100), 'here 100'),
])
def test_no_paper_figures_for_another_setup(change, why):
    text = tables_markdown(_rows_256_384(), _setup(**change))
    assert 'paper top-1' not in text and why in text


def test_no_paper_figures_for_another_view_protocol():
    dense = [r for r in _rows_256_384() if r['view'] == 'dense']
    for change in (dict(flip=False), dict(window=(2, 2))):
        text = tables_markdown(dense, _setup(**change))
        assert 'paper top-1' not in text and 'Paper figures: none for this view protocol' in text
    # the window is the dense views' own: the 10-view rows keep the paper's Table 5 figure
    assert '| 256 | 224x224 | 75.00 | 50.00 | 25.59 | 8.23 |' in tables_markdown(_rows_256_384(), _setup(window=(2, 2)))
    # ... only for 224 px crops at s = 256
    ten_view = [r for r in _rows_256_384() if r['view'] == 'ten_crop' and r['scale'] != 'multi-scale']
    for rows, change in ((ten_view, dict(crop_size=(192, 192))), (ten_view[1:], {})):
        text = tables_markdown(rows, _setup(**change))
        assert 'paper top-1' not in text and 'Paper figures: none for this view protocol' in text
    assert 'Flips off: the paper also scores the horizontally flipped image' in tables_markdown(
        _rows_256_384(), _setup(flip=False))
    other = error_table(np.zeros((1, 2, 2, 5), dtype=np.int32), np.array([0]), ['dense', 'full'], [300])
    text = tables_markdown(other, _setup(scales=(300,)))
    assert "Scales 300: this project's choice (the paper's Table 4: 256, 384, 480)" in text
    assert "full: a view mode the paper's Table 4 does not use (this project's choice)" in text
    assert 'Paper Table 6' not in text  # one scale: no combination


def test_model_identity_finds_the_papers_networks():
    def setup(name, **kw):
        model = timm.create_model(name, device='meta', **kw)  # full size without allocating the weights
        return EvalSetup.from_predictor(MultiScalePredictor(TorchBackend(model, device='meta')), 1000)
    assert setup('prelu_model_a').paper_key() == ('prelu_model_a', 'prelu')
    assert setup('prelu_model_c', act='relu').paper_key() == ('prelu_model_c', 'relu')
    assert setup('prelu_model_a', width_mult=0.5).paper_key() is None
    assert setup('prelu_model_b', fc_dim=1024).paper_key() is None


def test_twin_table4_is_the_papers_layout():
    rows = _rows_256_384()
    results = {'relu': rows, 'prelu': [dict(r, top1_err=r['top1_err'] - 25) for r in rows]}
    assert twin_table4_markdown(results, 'dense').splitlines() == [
        '| scale s | ReLU top-1 | ReLU top-5 | PReLU top-1 | PReLU top-5 |', '|---|---|---|---|---|',
        '| 256 | 75.00 | 50.00 | 50.00 | 50.00 |', '| 384 | 75.00 | 75.00 | 50.00 | 75.00 |',
        '| multi-scale | 50.00 | 50.00 | 25.00 | 50.00 |']


def test_bad_folders(tmp_path):
    predictor = None  # the folder is checked before any model runs
    with pytest.raises(UserError, match='no such folder'):
        evaluate_folder(predictor, tmp_path / 'missing')
    (tmp_path / 'empty' / 'cls').mkdir(parents=True)
    (tmp_path / 'empty' / 'cls' / 'a.txt').write_text('x')
    with pytest.raises(UserError, match='no images found'):
        evaluate_folder(predictor, tmp_path / 'empty')
