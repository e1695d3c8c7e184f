"""The whole test protocol in one graph: the fully convolutional dense head, and the protocol network against the
Python predictor, in PyTorch and in a bare ONNX Runtime session."""
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_prelu  # noqa: F401  (registers the models)
from timm_prelu.errors import ConfigError
from timm_prelu.inference.predictor import MultiScalePredictor, TorchBackend
from timm_prelu.onnx_model.protocol import DenseHead, ProtocolModel, five_crop_offsets, spp_bins_of

NARROW = dict(width_mult=0.125, fc_dim=64, num_classes=7)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    m = timm.create_model('prelu_model_a', **NARROW).eval()
    with torch.no_grad():
        for p in m.parameters():  # break the init's symmetries so that wrong bins or offsets show
            p.add_(0.02 * torch.randn_like(p))
    return m


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize('size', [13, 14, 15])
def test_spp_bins_read_from_the_layer_cover_each_level(model, size):
    bins = spp_bins_of(model.pool, size)
    assert [len(level) for level in bins] == list(model.pool.levels)
    for level in bins:
        assert level[0][0] == 0 and all(length >= 1 for _, length in level)
        assert max(start + length for start, length in level) <= size


@pytest.mark.parametrize('map_hw', [(14, 14), (17, 19), (15, 30)])
def test_dense_head_equals_the_head_window_by_window(model, map_hw):
    features = torch.randn(2, model.num_features, *map_hw)
    with torch.no_grad():
        dense = DenseHead(model, 14)(features)
        nh, nw = map_hw[0] - 13, map_hw[1] - 13
        ref = torch.stack([torch.stack([model.forward_head(features[:, :, i:i + 14, j:j + 14]) for j in range(nw)], -1)
                           for i in range(nh)], -2)
    assert dense.shape == ref.shape == (2, 7, nh, nw)
    assert (dense - ref).abs().max() < 1e-4


@pytest.mark.parametrize('hw', [(224, 301), (263, 224), (224, 224)])
@pytest.mark.parametrize('views', ['dense', 'full'])
def test_protocol_equals_predictor_on_a_resized_image(model, views, hw):
    """An image whose shorter side is already the scale: the resize is the identity in both, so they must agree."""
    image = _image(*hw)
    with torch.no_grad():
        graph = ProtocolModel(model, views, scales=(224,), flip=True)(torch.from_numpy(image)).numpy()
    predictor = MultiScalePredictor(TorchBackend(model), scales=(224,), views=views, flip=True)
    assert np.abs(graph - predictor.predict(Image.fromarray(image))).max() < 1e-4


@pytest.mark.parametrize('hw', [(224, 301), (289, 224)])
def test_ten_crop_averages_the_hand_cut_crops_and_their_flips(model, hw):
    image = _image(*hw, seed=1)
    crops = []
    for top, left in five_crop_offsets(hw[0], hw[1], 224):
        crop = np.asarray(Image.fromarray(image).crop((left, top, left + 224, top + 224)), dtype=np.float32)
        crops += [crop, crop[:, ::-1]]
    x = (np.stack(crops) / 255.0 - np.array(model.pretrained_cfg['mean'])) / np.array(model.pretrained_cfg['std'])
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32))).numpy()
        graph = ProtocolModel(model, 'ten_crop', scales=(224,))(torch.from_numpy(image)).numpy()
    assert np.abs(graph - _softmax(logits.astype(np.float64)).mean(0)).max() < 1e-5


def test_scales_average_with_equal_weight(model):
    image = torch.from_numpy(_image(230, 260, seed=2))
    with torch.no_grad():
        both = ProtocolModel(model, 'full', scales=(224, 256))(image)
        each = [ProtocolModel(model, 'full', scales=(s,))(image) for s in (224, 256)]
    assert torch.allclose(both, (each[0] + each[1]) / 2, atol=1e-6)
    assert not torch.allclose(both, each[0], atol=1e-4)


def test_bad_protocol_settings_are_refused(model):
    with pytest.raises(ConfigError, match='unknown protocol'):
        ProtocolModel(model, 'twelve_crop')
    with pytest.raises(ConfigError, match='at least the crop'):
        ProtocolModel(model, 'dense', scales=(128,))


def test_protocol_graph_runs_in_a_bare_onnxruntime_session(model, tmp_path):
    """Exported with dynamic height and width: uint8 (H, W, 3) in, probabilities out, equal to PyTorch.

    One scale keeps the export short; several scales are the same graph repeated (checked in PyTorch above).
    """
    ort = pytest.importorskip('onnxruntime')
    from timm_prelu.onnx_model.protocol import export_protocol
    path = tmp_path / 'model.protocol.onnx'
    export_protocol(model, path, protocol='dense', scales=(224,), flip=True, label_names=list('abcdefg'))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ('image', 'tensor(uint8)', ['height', 'width', 3])
    meta = json.loads(session.get_modelmeta().custom_metadata_map['timm_prelu_protocol'])
    assert meta['scales'] == [224] and meta['label_names'] == list('abcdefg') and meta['protocol'] == 'dense'
    predictor = MultiScalePredictor(TorchBackend(model), scales=(224,), views='dense', flip=True)
    for hw in [(224, 317), (401, 224), (224, 225)]:  # shorter side at the scale: the same input as the predictor's
        image = _image(*hw, seed=hw[0])
        probs = session.run(None, {'image': image})[0]
        assert probs.shape == (7,) and abs(float(probs.sum()) - 1) < 1e-5
        assert np.abs(probs - predictor.predict(Image.fromarray(image))).max() < 1e-4
    for hw in [(231, 317), (97, 131)]:  # resized in the graph: rounding to the 8-bit grid may flip a pixel level
        image = _image(*hw, seed=hw[1])
        with torch.no_grad():
            ref = ProtocolModel(model, 'dense', scales=(224,))(torch.from_numpy(image)).numpy()
        probs = session.run(None, {'image': image})[0]
        assert np.abs(probs - ref).max() < 1e-3 and probs.argmax() == ref.argmax()


def test_export_onnx_protocol_cli(tmp_path, capsys):
    ort = pytest.importorskip('onnxruntime')
    from timm_prelu.cli import main
    out = tmp_path / 'm.protocol.onnx'
    argv = ['export-onnx', 'prelu_model_a', '--model-kwargs', 'width_mult=0.125', 'fc_dim=64', '--num-classes', '5',
            '--protocol', 'ten_crop', '--scales', '224', '-o', str(out)]
    assert main(argv) == 0
    assert 'input "image": uint8 [height, width, 3]' in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    probs = session.run(None, {'image': _image(230, 301)})[0]
    assert probs.shape == (5,) and abs(float(probs.sum()) - 1) < 1e-5
    assert json.loads(session.get_modelmeta().custom_metadata_map['timm_prelu_protocol'])['protocol'] == 'ten_crop'
    before = out.read_bytes()
    assert main(argv) == 2 and 'already exists' in capsys.readouterr().err and out.read_bytes() == before
    assert main(argv[:-2] + ['--split', '-o', str(tmp_path / 'x.onnx')]) == 2
    assert 'one fp32 graph' in capsys.readouterr().err
