"""The whole test protocol in one graph: the fully convolutional dense head, the in-graph resize, the protocol
network against the Python predictor, and the exported graph in a bare ONNX Runtime session, OpenVINO and ONNX's
reference evaluator at odd image sizes."""
import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_prelu  # noqa: F401  (registers the models)
from timm_prelu.errors import ConfigError
from timm_prelu.inference.predictor import MultiScalePredictor, TorchBackend
from timm_prelu.onnx_model.protocol import (DenseHead, ProtocolModel, export_protocol, five_crop_offsets,
                                            resize_shorter_side, spp_bins_of)

from runtimes import RUNTIMES, load, max_abs_diff

NARROW = dict(width_mult=0.125, fc_dim=64, num_classes=7)
ODD_SIZES = [(37, 53), (61, 45), (71, 97)]
# Small settings that keep exports short: the dense window is 2 cells (64 px), the ten crops are 32 px.
DENSE = dict(protocol='dense', scales=(64, 80), crop_size=64)
TEN_CROP = dict(protocol='ten_crop', scales=(48, 64), crop_size=32)
FULL = dict(protocol='full', scales=(48,), crop_size=32)  # the SPP over the whole map, at dynamic sizes


@pytest.fixture(scope='module')
def model(one_torch_thread):
    torch.manual_seed(0)
    m = timm.create_model('prelu_model_a', **NARROW).eval()
    with torch.no_grad():
        for p in m.parameters():  # break the init's symmetries so that wrong bins or offsets show
            p.add_(0.02 * torch.randn_like(p))
    return m


@pytest.fixture(scope='module')
def dense_graph(model, tmp_path_factory):
    path = tmp_path_factory.mktemp('protocol') / 'model.protocol.onnx'
    export_protocol(model, path, label_names=list('abcdefg'), **DENSE)
    return path


@pytest.fixture(scope='module')
def full_graph(model, tmp_path_factory):
    path = tmp_path_factory.mktemp('protocol-full') / 'model.protocol.onnx'
    export_protocol(model, path, **FULL)
    return path


@pytest.fixture(scope='module')
def cli_ten_crop(tmp_path_factory):
    """`export-onnx --protocol ten_crop` on the narrow model: (argv, path, printed text)."""
    from timm_prelu.cli import main
    out = tmp_path_factory.mktemp('protocol-cli') / 'm.protocol.onnx'
    argv = ['export-onnx', 'prelu_model_a', '--model-kwargs', 'width_mult=0.125', 'fc_dim=64', '--num-classes', '5',
            '--protocol', 'ten_crop', '--scales', '48', '64', '--crop-size', '32', '-o', str(out)]
    text = io.StringIO()
    torch.manual_seed(0)  # the model the CLI builds is the one test_protocol_graph_runs_in_every_runtime rebuilds
    with contextlib.redirect_stdout(text):
        assert main(argv) == 0
    return argv, out, text.getvalue()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _torch_resize(image: Image.Image, scale: int, interpolation: str) -> Image.Image:
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    out = resize_shorter_side(x, scale, interpolation)[0].permute(1, 2, 0).numpy()
    return Image.fromarray(out.astype(np.uint8))


def _predictor(model, protocol, scales, crop_size, monkeypatch=None):
    """The Python predictor (window-by-window dense head) set up as the graph is, optionally fed the graph's
    resize instead of PIL's."""
    views = {'ten_crop': 'ten_crop'}.get(protocol, protocol)
    predictor = MultiScalePredictor(TorchBackend(model), scales=scales, views=views, flip=True,
                                    input_size=crop_size, crop_size=crop_size)
    if monkeypatch is not None:
        monkeypatch.setattr(predictor, 'resize', lambda im, s: _torch_resize(im, s, predictor.interpolation))
    return predictor


@pytest.mark.parametrize('size', [13, 14, 15])
def test_spp_bins_read_from_the_layer_cover_each_level(model, size):
    bins = spp_bins_of(model.pool, size)
    assert [len(level) for level in bins] == list(model.pool.levels)
    for level in bins:
        assert level[0][0] == 0 and all(length >= 1 for _, length in level)
        assert max(start + length for start, length in level) <= size


@pytest.mark.parametrize('window,map_hw', [(14, (14, 14)), (14, (17, 19)), (14, (15, 30)), (2, (3, 5))])
def test_dense_head_equals_the_head_window_by_window(model, window, map_hw):
    features = torch.randn(2, model.num_features, *map_hw)
    with torch.no_grad():
        dense = DenseHead(model, window)(features)
        nh, nw = map_hw[0] - window + 1, map_hw[1] - window + 1
        ref = torch.stack([torch.stack([model.forward_head(features[:, :, i:i + window, j:j + window])
                                        for j in range(nw)], -1) for i in range(nh)], -2)
    assert dense.shape == ref.shape == (2, 7, nh, nw)
    assert (dense - ref).abs().max() < 1e-4


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
@pytest.mark.parametrize('hw', [(37, 53), (64, 80), (200, 300), (80, 123)])
def test_in_graph_resize_is_pils_resample_up_to_rounding(hw, interpolation):
    """Same size and filter as PIL; a pixel may differ by a level or two where PIL's fixed-point sum rounds a
    near-tie the other way, and the shorter side already at the scale is left untouched."""
    image = _image(*hw, seed=hw[1])
    ours = np.asarray(_torch_resize(Image.fromarray(image), 80, interpolation), dtype=np.float32)
    h, w = hw
    size = (int(80 * w / min(h, w)), int(80 * h / min(h, w)))
    pil = np.asarray(Image.fromarray(image).resize(size, getattr(Image, interpolation.upper())), dtype=np.float32)
    assert ours.shape == pil.shape
    d = np.abs(ours - pil)
    assert d.max() <= 2 and d.mean() < 0.15
    if min(hw) == 80:
        assert d.max() == 0


@pytest.mark.parametrize('settings', [DENSE, TEN_CROP, dict(protocol='full', scales=(48, 64), crop_size=32)],
                         ids=['dense', 'ten_crop', 'full'])
def test_protocol_equals_predictor_fed_the_same_resized_image(model, settings, monkeypatch):
    predictor = _predictor(model, settings['protocol'], settings['scales'], settings['crop_size'], monkeypatch)
    net = ProtocolModel(model, **settings)
    for hw in ODD_SIZES:
        image = _image(*hw, seed=hw[0])
        with torch.no_grad():
            graph = net(torch.from_numpy(image)).numpy()
        assert np.abs(graph - predictor.predict(Image.fromarray(image))).max() < 1e-4


@pytest.mark.parametrize('hw', [(32, 45), (51, 32)])
def test_ten_crop_averages_the_hand_cut_crops_and_their_flips(model, hw):
    image = _image(*hw, seed=1)
    crops = []
    for top, left in five_crop_offsets(hw[0], hw[1], 32):
        crop = np.asarray(Image.fromarray(image).crop((left, top, left + 32, top + 32)), dtype=np.float32)
        crops += [crop, crop[:, ::-1]]
    x = (np.stack(crops) / 255.0 - np.array(model.pretrained_cfg['mean'])) / np.array(model.pretrained_cfg['std'])
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32))).numpy()
        graph = ProtocolModel(model, 'ten_crop', scales=(32,), crop_size=32)(torch.from_numpy(image)).numpy()
    assert np.abs(graph - _softmax(logits.astype(np.float64)).mean(0)).max() < 1e-5


def test_scales_average_with_equal_weight(model):
    image = torch.from_numpy(_image(50, 61, seed=2))
    with torch.no_grad():
        both = ProtocolModel(model, 'full', scales=(32, 48), crop_size=32)(image)
        each = [ProtocolModel(model, 'full', scales=(s,), crop_size=32)(image) for s in (32, 48)]
    assert torch.allclose(both, (each[0] + each[1]) / 2, atol=1e-6)
    assert not torch.allclose(both, each[0], atol=1e-4)


def test_bad_protocol_settings_are_refused(model):
    with pytest.raises(ConfigError, match='unknown protocol'):
        ProtocolModel(model, 'twelve_crop')
    with pytest.raises(ConfigError, match='at least the crop'):
        ProtocolModel(model, 'dense', scales=(128,))


_BARE_SESSION = '''
import json, sys
class NoProject:  # the service side: no timm-prelu, no torch, no timm
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('timm_prelu', 'torch', 'timm'):
            raise ImportError(name + ' is not installed on this side')
sys.meta_path.insert(0, NoProject())
import numpy as np
import onnxruntime as ort
graph, images, out = sys.argv[1:]
session = ort.InferenceSession(graph, providers=['CPUExecutionProvider'])
inp, res = session.get_inputs()[0], session.get_outputs()[0]
meta = json.loads(session.get_modelmeta().custom_metadata_map['timm_prelu_protocol'])
data = np.load(images)
probs = [session.run(['probs'], {'image': data[k]})[0] for k in sorted(data.files)]
np.save(out, np.stack(probs))
print(json.dumps({'input': [inp.name, inp.type, inp.shape], 'output': [res.name, res.type, res.shape], 'meta': meta}))
'''


def test_protocol_graph_in_a_bare_onnxruntime_session_equals_the_predictor(model, dense_graph, tmp_path, monkeypatch):
    """uint8 (H, W, 3) in, probabilities out, in a process where timm-prelu cannot be imported. Against the
    predictor's window-by-window dense head fed the same resized image: this is also the fully convolutional
    dense head against the window-by-window head, in ONNX Runtime."""
    images = {f'{i}': _image(*hw, seed=i) for i, hw in enumerate(ODD_SIZES)}
    np.savez(tmp_path / 'images.npz', **images)
    proc = subprocess.run([sys.executable, '-c', _BARE_SESSION, str(dense_graph), str(tmp_path / 'images.npz'),
                           str(tmp_path / 'probs.npy')], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info['input'] == ['image', 'tensor(uint8)', ['height', 'width', 3]]
    assert info['output'] == ['probs', 'tensor(float)', [7]]
    meta = info['meta']
    assert meta['scales'] == [64, 80] and meta['label_names'] == list('abcdefg') and meta['protocol'] == 'dense'
    probs = np.load(tmp_path / 'probs.npy')
    predictor = _predictor(model, 'dense', DENSE['scales'], DENSE['crop_size'], monkeypatch)
    for p, key in zip(probs, sorted(images)):
        assert abs(float(p.sum()) - 1) < 1e-5
        assert np.abs(p - predictor.predict(Image.fromarray(images[key]))).max() < 1e-4


def test_protocol_graph_stores_the_weights_once(model, dense_graph):
    import onnx
    proto = onnx.load(str(dense_graph))
    stored = sum(onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert stored < 1.2 * weights  # two scales: a copy per scale would be twice as much


@pytest.mark.parametrize('runtime', RUNTIMES)
@pytest.mark.parametrize('which', ['dense', 'ten_crop', 'full'])
def test_protocol_graph_runs_in_every_runtime(model, request, runtime, which):
    """Dynamic height and width at odd sizes, equal to PyTorch within 1e-4."""
    if which == 'dense':
        path, net = request.getfixturevalue('dense_graph'), ProtocolModel(model, **DENSE)
    elif which == 'full':
        path, net = request.getfixturevalue('full_graph'), ProtocolModel(model, **FULL)
    else:
        path = request.getfixturevalue('cli_ten_crop')[1]
        torch.manual_seed(0)  # the CLI built its model from seed 0 too, with the same kwargs
        net = ProtocolModel(timm.create_model('prelu_model_a', width_mult=0.125, fc_dim=64, num_classes=5).eval(),
                            **TEN_CROP)
    run = load(path, runtime)  # loaded once, then called at each size
    for hw in ODD_SIZES[:2]:
        image = _image(*hw, seed=hw[1])
        with torch.no_grad():
            ref = net(torch.from_numpy(image)).numpy()
        assert max_abs_diff(run(image), ref) < 1e-4


def test_export_onnx_protocol_cli(cli_ten_crop, capsys):
    import onnxruntime as ort
    from timm_prelu.cli import main
    argv, out, printed = cli_ten_crop
    assert 'input "image": uint8 [height, width, 3]' in printed
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    probs = session.run(None, {'image': _image(47, 61)})[0]
    assert probs.shape == (5,) and abs(float(probs.sum()) - 1) < 1e-5
    meta = json.loads(session.get_modelmeta().custom_metadata_map['timm_prelu_protocol'])
    assert meta['protocol'] == 'ten_crop' and meta['scales'] == [48, 64] and meta['crop_size'] == 32
    before = out.read_bytes()
    assert main(argv) == 2 and 'already exists' in capsys.readouterr().err and out.read_bytes() == before
    assert main(argv[:-2] + ['--split', '-o', str(out.with_name('x.onnx'))]) == 2
    assert 'one fp32 graph' in capsys.readouterr().err
