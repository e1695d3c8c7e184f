"""The evaluation checked against references computed here, never by the project's own aggregation code.

Each expected value is built by hand in the test: images resized with PIL, mirrored with ``Image.transpose``,
normalised with numpy, the network run on each view alone, softmax taken in numpy, then averaged. The predictor,
``eval`` and ``predict`` must agree with it. Each test fails if its part of the code takes a plausible wrong turn:
averaging logits instead of probabilities, dropping the flip, using only the first scale, reversing the top-k order,
ignoring ``num_classes`` when loading published weights.
"""
import argparse
import re

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import timm
import timm_prelu  # noqa: F401
from timm_prelu.cli import main
from timm_prelu.errors import PretrainedMismatchError
from timm_prelu.inference.evaluation import evaluate_folder
from timm_prelu.inference.predictor import MultiScalePredictor, TorchBackend

KWARGS = {'width_mult': 0.125, 'fc_dim': 64}
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
LABELS = [f'label_{i}' for i in range(10)]
SCALES = (224, 300)


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(3)
    return timm.create_model('prelu_model_a', num_classes=10, **KWARGS).eval()


@pytest.fixture(scope='module')
def photos():
    """Two real photos shipped with scikit-image (451 x 300 and 600 x 400)."""
    return {'cat': Image.fromarray(skdata.chelsea()), 'coffee': Image.fromarray(skdata.coffee())}


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _resized(photo, scale):
    w, h = photo.size
    size = (int(scale * w / h), scale) if h <= w else (scale, int(scale * h / w))
    return photo.resize(size, Image.BILINEAR)


def _tensor(img):
    x = (np.asarray(img, dtype=np.float64) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))


def _probs(model, img):
    with torch.no_grad():
        return _softmax(model(_tensor(img))[0].double().numpy())


def _full_view_probs(model, photo, scale):
    """The whole resized image and its mirror image, each through the network, softmax averaged."""
    img = _resized(photo, scale)
    return (_probs(model, img) + _probs(model, img.transpose(Image.FLIP_LEFT_RIGHT))) / 2


def _multi_scale(model, photo):
    return sum(_full_view_probs(model, photo, s) for s in SCALES) / len(SCALES)


def test_multi_scale_combination_by_hand(model, photos):
    predictor = MultiScalePredictor(TorchBackend(model), scales=SCALES, views='full', flip=True)
    for photo in photos.values():
        np.testing.assert_allclose(predictor.predict(photo), _multi_scale(model, photo), atol=1e-6, rtol=0)


def test_eval_multi_scale_row_by_hand(model, photos, tmp_path):
    root = tmp_path / 'val'
    for i, (name, photo) in enumerate(photos.items()):
        (root / f'{i}_{name}').mkdir(parents=True)
        photo.save(root / f'{i}_{name}' / f'{name}.png')
    predictor = MultiScalePredictor(TorchBackend(model), scales=SCALES, views='full', flip=True)
    result = evaluate_folder(predictor, root, out=tmp_path / 'eval', progress=False)
    with np.load(tmp_path / 'eval' / 'predictions.npz') as z:
        topk_idx, topk_prob = z['topk_idx'], z['topk_prob']  # (images, views, scales + combined, 5)
    expected_errors = []
    for i, photo in enumerate(photos.values()):
        expected = _multi_scale(model, photo)
        order = sorted(range(10), key=lambda c: -expected[c])[:5]
        assert topk_idx[i, 0, -1].tolist() == order
        np.testing.assert_allclose(topk_prob[i, 0, -1], expected[order], atol=1e-6, rtol=0)
        expected_errors.append((order[0] != i, i not in order))
    row = next(r for r in result.rows if r['scale'] == 'multi-scale')
    assert row['top1_err'] == pytest.approx(100 * np.mean([e[0] for e in expected_errors]))
    assert row['top5_err'] == pytest.approx(100 * np.mean([e[1] for e in expected_errors]))


def test_predict_prints_topk_in_order_with_probabilities(model, photos, tmp_path, capsys):
    from timm_prelu.onnx_model.export import export_onnx
    onnx_path = tmp_path / 'm.onnx'
    export_onnx(model, onnx_path, label_names=LABELS)
    photos['cat'].save(tmp_path / 'cat.png')
    assert main(['predict', str(tmp_path / 'cat.png'), '--onnx', str(onnx_path), '--threads', '1', '--views', 'full',
                 '--scales', *map(str, SCALES), '--topk', '5']) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(str(tmp_path / 'cat.png')))
    printed = re.findall(r'(label_\d+) \(([0-9.]+)\)', line)
    expected = _multi_scale(model, photos['cat'])
    order = sorted(range(10), key=lambda c: -expected[c])
    assert min(expected[a] - expected[b] for a, b in zip(order, order[1:6])) > 1e-4  # a well-posed order
    assert [name for name, _ in printed] == [LABELS[c] for c in order[:5]]
    np.testing.assert_allclose([float(p) for _, p in printed], expected[order[:5]], atol=6e-4, rtol=0)


def test_dense_views_include_the_flip(model, photos):
    """Every 14 x 14 window of the feature maps of the image and of its mirror image, pooled one by one."""
    photo = photos['cat']
    img = _resized(photo, 256)  # 384 x 256 -> a 16 x 24 feature map: 3 x 11 windows per image
    probs = []
    with torch.no_grad():
        for view in (img, img.transpose(Image.FLIP_LEFT_RIGHT)):
            feats = model.forward_features(_tensor(view))
            for i in range(feats.shape[2] - 14 + 1):
                for j in range(feats.shape[3] - 14 + 1):
                    probs.append(_softmax(model.forward_head(feats[:, :, i:i + 14, j:j + 14])[0].double().numpy()))
    assert len(probs) == 66
    scores = MultiScalePredictor(TorchBackend(model), scales=(256,), views='dense', flip=True).scores(photo)
    assert scores.num_views.tolist() == [[66]]
    np.testing.assert_allclose(scores.probs[0, 0], np.mean(probs, axis=0), atol=1e-6, rtol=0)


def test_ten_view_average_by_hand(model, photos):
    """Each of the 10 views cut out with PIL and run alone; the softmax outputs averaged here."""
    photo = photos['coffee']
    img = _resized(photo, 256)  # 384 x 256
    boxes = [(0, 0), (160, 0), (0, 32), (160, 32), (80, 16)]  # corners, then the centre of a 224 crop
    probs = []
    for left, top in boxes:
        crop = img.crop((left, top, left + 224, top + 224))
        probs += [_probs(model, crop), _probs(model, crop.transpose(Image.FLIP_LEFT_RIGHT))]
    scores = MultiScalePredictor(TorchBackend(model), scales=(256,), views='ten_crop').scores(photo)
    np.testing.assert_allclose(scores.probs[0, 0], np.mean(probs, axis=0), atol=1e-6, rtol=0)


@pytest.fixture(scope='module')
def hub_folder(tmp_path_factory):
    """A 7-class model published as a hub folder, the way `push` writes it, and the model itself."""
    from timm_prelu.hub import build_hub_folder
    torch.manual_seed(5)
    model = timm.create_model('prelu_model_a', num_classes=7, **KWARGS).eval()
    root = tmp_path_factory.mktemp('hub')
    args = argparse.Namespace(model='prelu_model_a', model_kwargs=dict(KWARGS), num_classes=7, img_size=None,
                              input_size=None, in_chans=None, mean=None, std=None, interpolation='', crop_pct=None,
                              data_dir='', train_split='train', dataset='')
    torch.save({'epoch': 1, 'arch': 'prelu_model_a', 'state_dict': model.state_dict(), 'args': args, 'version': 2},
               root / 'model_best.pth.tar')
    folder = root / 'published'
    build_hub_folder(root / 'model_best.pth.tar', folder, 'org/prelu_model_a.test')  # what push --dry-run writes
    return folder, model


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x).numpy()


def test_hub_loader_keeps_num_classes(hub_folder):
    folder, reference = hub_folder
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    expected = _logits(reference, x)
    assert expected.shape == (2, 7)

    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)  # config.json supplies the arguments
    assert loaded.num_classes == 7
    np.testing.assert_allclose(_logits(loaded, x), expected, atol=1e-6, rtol=0)

    weights = str(folder / 'model.safetensors')
    loaded = timm.create_model('prelu_model_a', pretrained=True, pretrained_cfg_overlay=dict(file=weights),
                               num_classes=7, **KWARGS)
    np.testing.assert_allclose(_logits(loaded, x), expected, atol=1e-6, rtol=0)


def test_hub_loader_starts_a_new_classifier_for_other_num_classes(hub_folder):
    folder, reference = hub_folder
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    weights = str(folder / 'model.safetensors')
    loaded = timm.create_model('prelu_model_a', pretrained=True, num_classes=4, **KWARGS,
                               pretrained_cfg_overlay=dict(file=weights, num_classes=7)).eval()
    assert _logits(loaded, x).shape == (1, 4)
    with torch.no_grad():  # the published backbone and fc1/fc2, a new 4-class fc3
        np.testing.assert_allclose(loaded.forward_head(loaded.forward_features(x), pre_logits=True).numpy(),
                                   reference.forward_head(reference.forward_features(x), pre_logits=True).numpy(),
                                   atol=1e-6, rtol=0)
    with pytest.raises(PretrainedMismatchError, match='num_classes=7'):
        timm.create_model('prelu_model_a', pretrained=True, pretrained_cfg_overlay=dict(file=weights), **KWARGS)
