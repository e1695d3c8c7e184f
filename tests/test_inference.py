"""Multi-scale, multi-view prediction: the paper's dense views on the feature map, on PyTorch and ONNX Runtime.

What the dense checks compare: the predictor runs the convolutions once per scale and flip, then the head on every
window x window window of the feature map. (1) Exact reference: the same windows cropped explicitly from
``model.forward_features`` and sent one by one through ``model.forward_head`` (<= 1e-4 on the logits).
(2) The full network on image crops: a window's cells equal those of the crop ``stride * window`` px wide plus the
receptive field's margin on each side (clipped at the image), within 1e-4; one cell less of margin, or the naive
crop of only the window's pixels, differs, because zero padding then replaces real context.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from timm_prelu.cli import main
from timm_prelu.errors import UserError
from timm_prelu.inference.images import ImageError
from timm_prelu.inference.predictor import (
    MultiScalePredictor, OnnxBackend, TorchBackend, crop_window_logits, softmax, window_positions)
from timm_prelu.onnx_model.runtime import OnnxModelError

TOL = 1e-4
PROVIDER = 'auto'  # CUDA (IO binding) where onnxruntime-gpu and a GPU are present, else CPU


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope='module')
def backends(exported):
    model, path = exported
    return {'torch': TorchBackend(model), 'onnx': OnnxBackend(path, providers=PROVIDER, threads=1)}


@pytest.mark.parametrize('kind', ['torch', 'onnx'])
def test_dense_views_equal_explicit_feature_map_windows(exported, backends, photo, kind):
    model = exported[0]
    predictor = MultiScalePredictor(backends[kind], scales=(256,), views='dense', flip=True)
    assert predictor.window == (14, 14)  # 224 / 16, the paper's window
    x = predictor.preprocess(photo, 256)
    assert x.shape == (2, 3, 256, 384)  # the image and its mirror image
    with torch.no_grad():
        feats = model.forward_features(torch.from_numpy(x))
        assert tuple(feats.shape[2:]) == (16, 24)
        explicit = torch.stack([torch.cat([model.forward_head(feats[b:b + 1, :, i:i + 14, j:j + 14])
                                           for i in range(16 - 14 + 1) for j in range(24 - 14 + 1)])
                                for b in range(2)]).numpy()  # (2, 33, classes)
    backend = backends[kind]
    windows = backend.window_logits(backend.features(x), (14, 14), batch_size=8)  # several head batches
    assert windows.shape == (2, 33, 10)
    assert np.abs(windows - explicit).max() <= TOL
    scores = predictor.scores(photo)
    assert scores.num_views.tolist() == [[66]]
    np.testing.assert_allclose(scores.probs[0, 0], softmax(explicit.reshape(-1, 10)).mean(0), atol=1e-5, rtol=0)


@pytest.mark.parametrize('kind', ['torch', 'onnx'])
def test_dense_windows_equal_the_network_on_image_crops_with_context(backends, photo, kind):
    backend = backends[kind]
    assert backend.receptive_field.margin_cells == 9  # model A: field 301 px, padding 143 px, stride 16
    predictor = MultiScalePredictor(backend, scales=(400,), views='dense', flip=False, window=4)
    x = predictor.preprocess(photo, 400)  # 400 x 601 -> a 25 x 37 feature map
    feats = backend.features(x)
    positions = window_positions(tuple(feats.shape[2:]), (4, 4))
    dense = backend.window_logits(feats, (4, 4)).reshape(len(positions), -1)
    chosen = [(0, 0), (0, 33), (21, 0), (21, 33), (10, 16), (11, 12)]  # corners and windows far from every border
    ref = dense[[positions.index(p) for p in chosen]]
    exact_err = np.abs(crop_window_logits(backend, x, (4, 4), chosen) - ref).max()
    assert exact_err <= TOL
    # less context lets the crop's zero padding reach the window: the interior windows change, by far more than
    # the float error of the exact crops (one cell less moves only the edge of the receptive field)
    interior = chosen[4:]
    short = crop_window_logits(backend, x, (4, 4), interior, margin=backend.receptive_field.margin_cells - 1)
    naive = crop_window_logits(backend, x, (4, 4), interior, margin=0)
    assert np.abs(short - ref[4:]).max() > 20 * max(exact_err, 1e-6)
    assert np.abs(naive - ref[4:]).max() > 10 * TOL


def test_full_and_center_views_and_averaging(exported, backends, photo):
    model = exported[0]
    predictor = MultiScalePredictor(backends['torch'], scales=(240, 300), views=('full', 'center'), flip=True)
    scores = predictor.scores(photo)
    assert scores.num_views.tolist() == [[2, 2], [2, 2]]
    for si, scale in enumerate((240, 300)):
        resized = photo.resize((int(scale * 451 / 300), scale), Image.BILINEAR)
        left, top = round((resized.width - 224) / 2), round((resized.height - 224) / 2)
        for vi, img in enumerate((resized, resized.crop((left, top, left + 224, top + 224)))):
            x = np.stack([predictor.to_array(img), predictor.to_array(img.transpose(Image.FLIP_LEFT_RIGHT))])
            with torch.no_grad():
                probs = softmax(model(torch.from_numpy(x)).numpy().astype(np.float64)).mean(0)
            np.testing.assert_allclose(scores.probs[vi, si], probs, atol=1e-6, rtol=0)
    np.testing.assert_allclose(scores.combined('full'), scores.probs[0].mean(0))
    np.testing.assert_allclose(predictor.predict(photo), scores.probs.mean(axis=(0, 1)), atol=1e-12)


def test_onnx_and_torch_predictors_agree_on_every_view(backends, photo):
    views = ('full', 'center', 'dense')
    a, b = (MultiScalePredictor(backends[k], scales=(224, 288), views=views).scores(photo) for k in ('torch', 'onnx'))
    assert np.abs(a.probs - b.probs).max() <= 1e-5
    assert (a.num_views == b.num_views).all()


def test_preprocessing_resizes_the_shorter_side_and_normalises(backends):
    predictor = MultiScalePredictor(backends['torch'], scales=(64,), views='full', flip=False)
    gray = Image.new('RGB', (50, 100), (128, 128, 128))
    x = predictor.preprocess(gray, 64)
    assert x.shape == (1, 3, 128, 64)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[0, :, 5, 5], (128 / 255 - mean) / std, atol=1e-5)


def test_window_follows_the_training_size_and_is_clipped_to_small_maps(backends, photo):
    assert MultiScalePredictor(backends['torch'], input_size=32, views='dense').window == (2, 2)
    assert MultiScalePredictor(backends['torch'], window=5, views='dense').window == (5, 5)
    # at s = 64 the map is 4 x 6 cells: the 14 x 14 window covers all of it, one view per flip
    scores = MultiScalePredictor(backends['onnx'], scales=(64,), views=('dense', 'full')).scores(photo)
    assert scores.num_views.tolist() == [[2], [2]]
    np.testing.assert_allclose(scores.probs[0], scores.probs[1], atol=1e-6)


def test_predictor_errors(exported, backends, tmp_path):
    with pytest.raises(UserError, match='below the network.s minimum input of 15'):
        MultiScalePredictor(backends['torch'], scales=(14, 256))
    with pytest.raises(UserError, match='unknown view'):
        MultiScalePredictor(backends['torch'], views=('dense', 'multi'))
    lone = tmp_path / 'lone.onnx'
    shutil.copy(exported[1], lone)  # the model graph without its backbone / head
    with pytest.raises(UserError, match='split=True'):
        MultiScalePredictor(OnnxBackend(lone, providers='cpu'), views='dense')
    with pytest.raises(OnnxModelError, match='is a model graph, given as the backbone'):
        OnnxBackend(None, backbone=exported[1], head=exported[1].with_name('a.head.onnx'), providers='cpu')
    panorama = Image.new('RGB', (4000, 100))
    with pytest.raises(ImageError, match='aspect ratio'):
        MultiScalePredictor(backends['torch'], scales=(480,), views='full').scores(panorama)


def test_predict_cli_end_to_end(exported, digits_folder, tmp_path, capsys):
    from safetensors.torch import save_file
    model, path = exported
    images = sorted((digits_folder / 'val' / '3').glob('*.png'))[:2]
    files = [shutil.copy(p, tmp_path / f'{i}.png') for i, p in enumerate(images)]
    Image.open(images[0]).convert('L').save(tmp_path / 'gray.png')
    (tmp_path / 'notes.jpg').write_text('not an image')
    inputs = [str(f) for f in files] + [str(tmp_path / 'gray.png'), str(tmp_path / 'notes.jpg')]
    common = ['--scales', '32', '48', '--input-size', '32', '--topk', '3']

    assert main(['predict', *inputs, '--onnx', str(path), '--threads', '1', *common]) == 0
    out = capsys.readouterr().out
    assert 'predictor: ONNX Runtime' in out and 'ExecutionProvider' in out and 'views dense' in out
    assert 'window 2x2 cells' in out
    assert 'note: grayscale image replicated to RGB' in out
    assert 'skipped:' in out and 'notes.jpg: not an image file' in out
    assert '3 image(s) predicted, 1 skipped' in out
    onnx_top = [line.split(': ')[1].split()[0] for line in out.splitlines() if line.startswith(str(tmp_path))]
    assert len(onnx_top) == 3 and all(t.startswith('class_') for t in onnx_top)

    assert main(['predict', *inputs, '--onnx', str(path), '--threads', '1', *common, '--json']) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout holds the document alone
    assert 'predictor: ONNX Runtime' in captured.err and '3 image(s) predicted, 1 skipped' in captured.err
    assert [d['path'] for d in document['skipped']] == [str(tmp_path / 'notes.jpg')]
    assert [d['path'] for d in document['images']] == inputs[:3]
    for image, top in zip(document['images'], onnx_top):
        classes = image['classes']
        assert [c['index'] for c in classes] == list(range(10))
        assert [c['label'] for c in classes] == [f'class_{i}' for i in range(10)]
        assert sum(c['probability'] for c in classes) == pytest.approx(1, abs=1e-6)
        assert max(classes, key=lambda c: c['probability'])['label'] == top
    assert document['images'][2]['notes'] == ['grayscale image replicated to RGB']

    save_file(model.state_dict(), tmp_path / 'weights.safetensors')
    assert main(['predict', *inputs, '--model', 'prelu_model_a', '--checkpoint', str(tmp_path / 'weights.safetensors'),
                 '--model-kwargs', 'width_mult=0.125', 'fc_dim=64', '--device', 'cpu', *common]) == 0
    out = capsys.readouterr().out
    assert 'predictor: PyTorch' in out
    torch_top = [line.split(': ')[1].split()[0] for line in out.splitlines() if line.startswith(str(tmp_path))]
    assert [f'class_{t}' for t in torch_top] == onnx_top  # same weights, same protocol: same answers

    assert main(['predict', str(tmp_path / 'notes.jpg'), '--onnx', str(path)]) == 2
    assert 'no image could be read' in capsys.readouterr().err
