"""The paper's 10-view test (its Tables 2 and 5), checked against crops cut out by hand one by one.

The reference resizes with PIL, cuts each of the five crops with ``Image.crop`` and mirrors it with
``Image.transpose``, normalises, runs the network on each crop alone and averages the ten softmax outputs here in
the test: nothing of the predictor's own preprocessing or averaging is used.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from timm_prelu.cli import main
from timm_prelu.errors import ConfigError
from timm_prelu.inference.predictor import MultiScalePredictor, OnnxBackend, TorchBackend


MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    yield


def _hand_ten_crop(model, photo, scale, crop):
    """Softmax averaged over the 10 views, each crop cut with PIL and run through the model on its own."""
    w = int(scale * photo.width / photo.height)  # the shorter side (the height) becomes `scale`
    resized = photo.resize((w, scale), Image.BILINEAR)
    cx, cy = int(round((w - crop) / 2)), int(round((scale - crop) / 2))
    boxes = [(0, 0), (w - crop, 0), (0, scale - crop), (w - crop, scale - crop), (cx, cy)]
    probs = []
    for left, top in boxes:
        piece = resized.crop((left, top, left + crop, top + crop))
        for view in (piece, piece.transpose(Image.FLIP_LEFT_RIGHT)):
            x = (np.asarray(view, dtype=np.float64) / 255.0 - MEAN) / STD
            with torch.no_grad():
                logits = model(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)))[0].double().numpy()
            e = np.exp(logits - logits.max())
            probs.append(e / e.sum())
    assert len(probs) == 10
    return np.mean(probs, axis=0)


@pytest.mark.parametrize('kind', ['torch', 'onnx'])
def test_ten_crop_equals_crops_cut_by_hand(exported, photo, kind):
    model, path = exported
    backend = TorchBackend(model) if kind == 'torch' else OnnxBackend(path, providers='cpu', threads=1)
    predictor = MultiScalePredictor(backend, scales=(256,), views='ten_crop')
    scores = predictor.scores(photo)
    assert scores.num_views.tolist() == [[10]]
    np.testing.assert_allclose(scores.probs[0, 0], _hand_ten_crop(model, photo, 256, 224),
                               atol=1e-6 if kind == 'torch' else 1e-5, rtol=0)


def test_crop_size_is_a_parameter_and_scales_combine(exported, photo):
    model = exported[0]
    predictor = MultiScalePredictor(TorchBackend(model), scales=(240, 300), views='ten_crop', crop_size=200)
    assert 'crop 200x200' in predictor.describe()
    scores = predictor.scores(photo)
    by_hand = [_hand_ten_crop(model, photo, s, 200) for s in (240, 300)]
    for si in range(2):
        np.testing.assert_allclose(scores.probs[0, si], by_hand[si], atol=1e-6, rtol=0)
    np.testing.assert_allclose(predictor.predict(photo), (by_hand[0] + by_hand[1]) / 2, atol=1e-6, rtol=0)


def test_the_ten_crops_run_as_one_batch(exported, photo):
    backend = TorchBackend(exported[0])
    shapes = []
    run = backend.logits
    backend.logits = lambda x: shapes.append(x.shape) or run(x)
    MultiScalePredictor(backend, scales=(256, 288), views='ten_crop').scores(photo)
    assert shapes == [(10, 3, 224, 224), (10, 3, 224, 224)]


def test_ten_crop_settings_are_checked(exported):
    backend = TorchBackend(exported[0])
    with pytest.raises(ConfigError, match='flips') as e:
        MultiScalePredictor(backend, views='ten_crop', flip=False)
    assert e.value.param == 'flip'
    with pytest.raises(ConfigError, match='minimum input') as e:
        MultiScalePredictor(backend, views='ten_crop', crop_size=8)
    assert e.value.param == 'crop_size'


def test_predict_cli_ten_crop(exported, photo, tmp_path, capsys):
    model, path = exported
    photo.save(tmp_path / 'cat.png')
    assert main(['predict', str(tmp_path / 'cat.png'), '--onnx', str(path), '--threads', '1', '--scales', '256',
                 '--views', 'ten_crop', '--crop-size', '200', '--topk', '1']) == 0
    out = capsys.readouterr().out
    assert 'views ten_crop' in out and 'crop 200x200' in out
    best = int(np.argmax(_hand_ten_crop(model, photo, 256, 200)))
    assert f'cat.png: class_{best} (' in out
