"""ONNX export: one graph with dynamic batch / height / width matching PyTorch, split graphs, metadata, atomicity."""
import argparse
import json

import numpy as np
import onnx
import pytest
import torch

import timm
import timm_prelu  # noqa: F401
from timm_prelu.errors import UserError
from timm_prelu.onnx_model import export as onnx_export
from timm_prelu.onnx_model.export import OnnxExport, export_onnx, resolve_model, split_paths
from timm_prelu.onnx_model.runtime import METADATA_KEY, OnnxModel, read_metadata

from conftest import ONNX_LABELS as LABELS, ONNX_NARROW as NARROW, narrow_a_export
SIZES = [(16, 16), (97, 131), (224, 224), (257, 383), (480, 640)]
FP32_TOL = 1e-4  # max abs difference of logits
PROVIDER = 'auto'  # CUDA (IO binding) where onnxruntime-gpu and a GPU are present, else CPU
FP16_REL_TOL = 5e-3  # fp16: max abs difference <= 5e-3 * max(1, max |logit|)


def _model(name: str, seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, **NARROW, **kwargs).eval()


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Each model exported once: A with --split (its model graph is composed from backbone + head), B and C plain."""
    model, path = narrow_a_export(tmp_path_factory)
    session = OnnxModel(path, providers=PROVIDER, threads=1)
    out = {'prelu_model_a': (model, OnnxExport(path, *split_paths(path)), session)}
    root = tmp_path_factory.mktemp('onnx')
    for i, name in enumerate(('prelu_model_b', 'prelu_model_c'), start=1):
        model = _model(name, seed=i)
        result = export_onnx(model, root / f'{name}.onnx', label_names=LABELS)
        out[name] = (model, result, OnnxModel(result.model, providers=PROVIDER, threads=1))
    return out


@pytest.fixture(scope='module')
def exported_adaptive(tmp_path_factory):
    """The same three models with spp_bins='adaptive' (the exports above use the default, 'sppnet')."""
    root = tmp_path_factory.mktemp('onnx-adaptive')
    out = {}
    for i, name in enumerate(('prelu_model_a', 'prelu_model_b', 'prelu_model_c')):
        model = _model(name, seed=i, spp_bins='adaptive')
        result = export_onnx(model, root / f'{name}.onnx', label_names=LABELS)
        out[name] = (model, result, OnnxModel(result.model, providers=PROVIDER, threads=1))
    return out


@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('name', ['prelu_model_a', 'prelu_model_b', 'prelu_model_c'])
@pytest.mark.parametrize('spp_bins', ['sppnet', 'adaptive'])
def test_onnxruntime_matches_pytorch(request, spp_bins, name, size, batch):
    exported = request.getfixturevalue('exported' if spp_bins == 'sppnet' else 'exported_adaptive')
    model, _, session = exported[name]
    assert model.pool.bins == spp_bins
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(size[0] * batch))
    with torch.no_grad():
        ref = model(x).numpy()
    out = session.run(x.numpy())
    assert out.shape == (batch, 10)
    assert np.abs(out - ref).max() <= FP32_TOL


def test_split_graphs_match_forward_features_and_forward_head(exported):
    model, result, _ = exported['prelu_model_a']
    backbone = OnnxModel(result.backbone, providers=PROVIDER, threads=1)
    head = OnnxModel(result.head, providers=PROVIDER, threads=1)
    assert (backbone.graph, head.graph) == ('backbone', 'head')
    x = torch.randn(3, 3, 97, 131)
    with torch.no_grad():
        feats = model.forward_features(x)
        np.testing.assert_allclose(backbone.run(x), feats.numpy(), atol=FP32_TOL, rtol=0)
        for shape in [(5, model.num_features, 14, 14), (2, model.num_features, 1, 1), (1, model.num_features, 3, 7)]:
            f = torch.randn(*shape)
            assert np.abs(head.run(f) - model.forward_head(f).numpy()).max() <= FP32_TOL


def test_graph_is_valid_with_named_dynamic_axes(exported):
    for name, (_, result, _) in exported.items():
        for path in result.paths:
            onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(result.model), load_external_data=False)
        (inp,), (out,) = proto.graph.input, proto.graph.output
        assert (inp.name, out.name) == ('image', 'logits')
        dims = inp.type.tensor_type.shape.dim
        assert dims[1].dim_value == 3
        assert all(dims[i].dim_param and not dims[i].dim_value for i in (0, 2, 3)), dims  # symbolic N, H, W


def test_metadata_carries_the_timm_config_and_source(exported):
    model, result, session = exported['prelu_model_a']
    infos = [read_metadata(p) for p in result.paths]
    info, cfg = infos[0], infos[0]['pretrained_cfg']
    assert [i['graph'] for i in infos] == ['model', 'backbone', 'head']
    assert len({i['export_id'] for i in infos}) == 1 and len({i['weights_sha256'] for i in infos}) == 1
    assert info['split'] == {'backbone': result.backbone.name, 'head': result.head.name}
    assert info['model_name'] == 'prelu_model_a' and info['num_classes'] == 10
    assert info['source'] == {'kind': 'module'}
    assert info['receptive_field'] == {'size': 301, 'stride': 16, 'padding': 143}
    assert info['min_input_size'] == model.min_input_size and info['num_features'] == model.num_features
    assert cfg['mean'] == list(model.pretrained_cfg['mean']) and cfg['std'] == list(model.pretrained_cfg['std'])
    assert cfg['interpolation'] == 'bilinear' and cfg['crop_pct'] == 0.875 and cfg['input_size'] == [3, 224, 224]
    assert cfg['num_classes'] == 10 and cfg['label_names'] == LABELS
    assert session.label_names == LABELS and session.pretrained_cfg == cfg


def test_export_by_name_records_kwargs_and_weights_digest(tmp_path):
    """A model name builds the model (random init here); metadata says so and records the kwargs."""
    model, source = resolve_model('prelu_model_a', model_kwargs=NARROW)
    assert source == {'kind': 'random-init', 'model_kwargs': NARROW} and not model.training
    with pytest.raises(UserError, match='unknown model'):
        resolve_model('prelu_model_z')
    with pytest.raises(UserError, match='no such file'):
        resolve_model(str(tmp_path / 'missing.pth.tar'))


def test_train_py_checkpoint_resolution(tmp_path, digits_folder):
    """A checkpoint in train.py's format: the model, its kwargs and image size come from its args; the data folder
    it names is not read (class names come only from the checkpoint itself or the caller)."""
    model = _model('prelu_model_a', seed=3)
    args = argparse.Namespace(model='prelu_model_a', model_kwargs={'width_mult': 0.125, 'fc_dim': 64},
                              num_classes=10, img_size=32, input_size=None, in_chans=None, mean=None, std=None,
                              interpolation='', crop_pct=None, data_dir=str(digits_folder), train_split='train',
                              dataset='')
    path = tmp_path / 'model_best.pth.tar'
    torch.save({'epoch': 4, 'arch': 'prelu_model_a', 'state_dict': model.state_dict(), 'args': args,
                'metric': 55.5, 'version': 2}, path)
    loaded, source = resolve_model(path)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert source['kind'] == 'checkpoint' and source['epoch'] == 4 and len(source['sha256']) == 64
    assert source['model_kwargs'] == NARROW
    assert loaded.pretrained_cfg['input_size'] == (3, 32, 32)
    assert 'label_names' not in loaded.pretrained_cfg


@pytest.fixture(scope='module')
def fp16_export(exported, tmp_path_factory):
    model = exported['prelu_model_b'][0]
    path = tmp_path_factory.mktemp('fp16') / 'b16.onnx'
    export_onnx(model, path, fp16=True)
    return model, path


@pytest.mark.parametrize('size', [(97, 131), (224, 224)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_fp16_graph_matches_within_stated_tolerance(exported, fp16_export, size):
    model, path = fp16_export
    session = OnnxModel(path, providers=PROVIDER, threads=1)
    assert session.info['dtype'] == 'float16' and session.info['io_dtype'] == 'float32'
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        ref = model(x).numpy()
    out = session.run(x.numpy())
    assert out.dtype == np.float32
    err = np.abs(out - ref).max()
    assert err <= FP16_REL_TOL * max(1.0, np.abs(ref).max())
    assert err > 0  # it really runs in half precision
    assert path.stat().st_size < 0.6 * exported['prelu_model_b'][1].model.stat().st_size


def test_failed_export_leaves_no_file(exported, tmp_path, monkeypatch):
    """Graphs go to temp files renamed only when all passed: a failure on the last one keeps the old file alone."""
    model, result, _ = exported['prelu_model_a']
    target = tmp_path / 'model.onnx'
    previous = result.model.read_bytes()  # an earlier export of ours, which overwrite may replace
    target.write_bytes(previous)
    protos = {'image': onnx.load(str(result.backbone)), 'features': onnx.load(str(result.head))}
    monkeypatch.setattr(onnx_export, '_export_graph', lambda module, example, arg_name, *args: protos[arg_name])
    checked = []
    real_check = onnx.checker.check_model

    def check_then_fail_on_the_head(path, **kwargs):
        checked.append(path)
        if len(checked) == 3:  # model and backbone graphs are already written to their temp files
            raise onnx.checker.ValidationError('simulated checker failure')
        real_check(path, **kwargs)
    monkeypatch.setattr(onnx.checker, 'check_model', check_then_fail_on_the_head)
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(model, target, split=True, verify=False, overwrite=True)
    assert len(checked) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.onnx']
    assert target.read_bytes() == previous


def test_bad_output_path(tmp_path):
    with pytest.raises(UserError, match='must end in .onnx'):
        export_onnx(_model('prelu_model_a', seed=0), tmp_path / 'model.bin')
    (tmp_path / 'a-file').write_text('')
    with pytest.raises(UserError, match='cannot be created'):
        export_onnx(_model('prelu_model_a', seed=0), tmp_path / 'a-file' / 'model.onnx')


def test_metadata_json_is_plain(exported):
    proto = onnx.load(str(exported['prelu_model_c'][1].model), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props[METADATA_KEY])['model_name'] == 'prelu_model_c'
    assert json.loads(props['pretrained_cfg'])['label_names'] == LABELS
