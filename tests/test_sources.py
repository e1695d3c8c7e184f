"""One resolver for every model source, one label reader, and recorded checkpoint arguments treated as data."""
import argparse
import hashlib
import json
import os
import re
import resource

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

import timm_prelu.sources.resolve as resolve_module
from hub_server import HubServer, point_client_at
from timm_prelu.cli import main as cli
from timm_prelu.errors import (CheckpointError, ConfigError, DatasetError, ModelSourceError, OnnxModelError,
                               PretrainedMismatchError)
from timm_prelu.sources import read_label_names, resolve_model

TINY = {'width_mult': 0.125, 'fc_dim': 64}
IMG = 32


def _tiny(num_classes=10, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model('prelu_model_a', num_classes=num_classes, **TINY, **kwargs).eval()


def _train_args(**extra):
    """The part of train.py's argparse namespace that describes the model, plus ``extra`` fields."""
    fields = dict(model='prelu_model_a', model_kwargs=dict(TINY), num_classes=10, in_chans=None, img_size=IMG,
                  input_size=None, mean=None, std=None, interpolation='', crop_pct=None, dataset='',
                  data_dir=None, train_split='train', class_map='', model_ema=False, epochs=3, lr=0.02)
    fields.update(extra)
    return argparse.Namespace(**fields)


def _save_checkpoint(path, model, args=None, **extra):
    torch.save({'epoch': 2, 'arch': 'prelu_model_a', 'state_dict': model.state_dict(),
                'args': args if args is not None else _train_args(), 'metric': 42.0, **extra}, path)
    return path


def _batch(seed=0):
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    return err


# --- the label reader ------------------------------------------------------------------------------------------------

def test_labels_from_a_file_and_a_folder(tmp_path):
    path = tmp_path / 'labels.txt'
    path.write_text('tabby cat\n  dog \nbird\n\n', encoding='utf-8')
    assert read_label_names(path) == ['tabby cat', 'dog', 'bird']
    folder = tmp_path / 'imagefolder'
    for name in ('class10', 'class2', 'class1', '.hidden'):
        (folder / name).mkdir(parents=True)
    (folder / 'notes.txt').write_text('not a class')
    assert read_label_names(folder) == ['class1', 'class2', 'class10']  # timm's natural order, as train.py indexes


@pytest.mark.parametrize('content, error, message', [
    (b'cat\n\ndog\n', ConfigError, 'line 2 is empty'),
    (b'', ConfigError, 'is empty'),
    (b'\n\n', ConfigError, 'is empty'),
    (b'cat\n\xff\xfe\n', ConfigError, 'not UTF-8'),
    (b'cat\ndog\ncat\n', ConfigError, "repeat 'cat'"),
    (b'a\x00b\n', ConfigError, 'not a class name'),
    (b'x' * (5 * 1024 * 1024), ConfigError, 'more than a label file holds'),
])
def test_bad_label_files(tmp_path, content, error, message):
    path = tmp_path / 'labels.txt'
    path.write_bytes(content)
    with pytest.raises(error, match=message) as e:
        read_label_names(path)
    assert e.value.param == 'labels'


def test_bad_label_folders(tmp_path):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'image.png').write_bytes(b'')
    with pytest.raises(DatasetError, match='no class folders') as e:
        read_label_names(tmp_path / 'empty')
    assert e.value.param == 'labels'
    with pytest.raises(ConfigError, match='neither a file nor a folder'):
        read_label_names(tmp_path / 'missing')


# --- each kind of source ---------------------------------------------------------------------------------------------

def test_registry_name(tmp_path):
    resolved = resolve_model('prelu_model_a', model_kwargs=TINY, num_classes=3, labels=['a', 'b', 'c'])
    assert resolved.provenance.kind == 'random-init' and not resolved.model.training
    assert resolved.label_names == ['a', 'b', 'c'] == resolved.model.pretrained_cfg['label_names']
    assert resolved.model_kwargs == {**TINY, 'num_classes': 3}
    with pytest.raises(ModelSourceError, match='unknown model') as e:
        resolve_model('prelu_model_z')
    assert e.value.param == 'source'
    with pytest.raises(ModelSourceError, match='no such file or folder'):
        resolve_model(str(tmp_path / 'missing.pth.tar'))
    with pytest.raises(ConfigError, match='2 label names given.*3 classes') as e:
        resolve_model('prelu_model_a', model_kwargs=TINY, num_classes=3, labels=['a', 'b'])
    assert e.value.param == 'labels'


@pytest.mark.parametrize('suffix', ['.pth.tar', '.pth'])
def test_train_py_checkpoint_and_its_ema_weights(tmp_path, suffix):
    model, ema = _tiny(seed=1), _tiny(seed=2)
    path = _save_checkpoint(tmp_path / f'last{suffix}', model, state_dict_ema=ema.state_dict())
    x = _batch()
    resolved = resolve_model(path)
    assert torch.equal(_logits(resolved.model, x), _logits(model, x))
    assert resolved.provenance.kind == 'checkpoint' and resolved.provenance.epoch == 2
    assert resolved.provenance.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert resolved.pretrained_cfg['input_size'] == (3, IMG, IMG) and resolved.label_names is None
    ema_resolved = resolve_model(path, use_ema=True)
    assert torch.equal(_logits(ema_resolved.model, x), _logits(ema, x)) and ema_resolved.provenance.ema


def test_safetensors_file_hub_folder_and_local_dir(tmp_path):
    from timm.models import save_for_hf
    model = _tiny(seed=3)
    x = _batch()
    bare = tmp_path / 'weights.safetensors'
    safetensors.torch.save_file(model.state_dict(), bare)
    with pytest.raises(ModelSourceError, match='does not record its architecture') as e:
        resolve_model(bare)
    assert e.value.param == 'model_name'
    resolved = resolve_model(bare, model_name='prelu_model_a', model_kwargs=TINY)
    assert resolved.model.num_classes == 10  # read from the classifier's weight
    assert torch.equal(_logits(resolved.model, x), _logits(model, x))

    folder = tmp_path / 'hub-folder'
    save_for_hf(model, folder, model_config={'label_names': [f'n{i}' for i in range(10)]}, safe_serialization=True)
    for source in (folder, f'local-dir:{folder}', folder / 'model.safetensors'):
        resolved = resolve_model(source)
        assert resolved.provenance.kind == 'local-dir', source
        assert resolved.label_names == [f'n{i}' for i in range(10)]
        assert torch.equal(_logits(resolved.model, x), _logits(model, x))
    assert resolve_model(folder, labels=[str(i) for i in range(10)]).label_names[0] == '0'  # the caller's win
    with pytest.raises(ModelSourceError, match='folder without config.json'):
        resolve_model(tmp_path)


def test_onnx_file_only_where_allowed(tmp_path_factory, tmp_path):
    from conftest import ONNX_LABELS, narrow_a_export
    model, path = narrow_a_export(tmp_path_factory)  # exported once per session, shared with the ONNX tests
    with pytest.raises(ModelSourceError, match='is an ONNX graph'):
        resolve_model(path)
    resolved = resolve_model(path, allow_onnx=True, onnx_options={'providers': 'cpu'})
    assert resolved.provenance.kind == 'onnx' and resolved.label_names == ONNX_LABELS
    assert resolved.provenance.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = _batch()
    assert np.allclose(resolved.model.run(x.numpy()), _logits(model, x).numpy(), atol=1e-4)
    relabelled = resolve_model(path, allow_onnx=True, labels=[f'c{i}' for i in range(10)])
    assert relabelled.label_names == relabelled.model.pretrained_cfg['label_names'] == [f'c{i}' for i in range(10)]
    with pytest.raises(ConfigError, match='carries its own configuration'):
        resolve_model(path, allow_onnx=True, model_kwargs={'fc_dim': 8})
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'not a graph')
    with pytest.raises(OnnxModelError):
        resolve_model(bad, allow_onnx=True)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with HubServer({'hf_write': ('alice', True)}) as server:
        point_client_at(monkeypatch, server.url, tmp_path / 'hf_home')
        yield server


def _hub_files(model, tmp_path, config_update=None):
    from timm.models import save_for_hf
    folder = tmp_path / 'to-publish'
    save_for_hf(model, folder, model_config={'label_names': [f'h{i}' for i in range(10)]}, safe_serialization=True)
    config = json.loads((folder / 'config.json').read_text())
    for key, value in (config_update or {}).items():
        if value is None:
            config.pop(key, None)
        elif isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    weights = (folder / 'model.safetensors').read_bytes()
    return {'config.json': json.dumps(config).encode(), 'model.safetensors': weights}


def test_hf_hub_source_is_verified_and_pinned(hub, tmp_path):
    model = _tiny(seed=5)
    files = _hub_files(model, tmp_path)
    first = hub.state.commit_files('alice/tiny', files)
    hub.state.commit_files('alice/tiny', {'README.md': b'# tiny\n'})  # a later commit on main
    resolved = resolve_model('hf-hub:alice/tiny')
    x = _batch()
    assert torch.equal(_logits(resolved.model, x), _logits(model, x))
    assert resolved.provenance.kind == 'hf-hub' and resolved.provenance.repo_id == 'alice/tiny'
    assert resolved.provenance.sha256 == hashlib.sha256(files['model.safetensors']).hexdigest()
    assert resolved.provenance.revision == hub.state.repos['alice/tiny'].branches['main']
    assert resolved.label_names == [f'h{i}' for i in range(10)]
    assert resolved.pretrained_cfg['hf_hub_id'] == 'alice/tiny'
    pinned = resolve_model(f'hf-hub:alice/tiny@{first}')
    assert pinned.provenance.revision == first
    with pytest.raises(ModelSourceError, match='not a Hub repo id'):
        resolve_model('hf-hub:alice')


@pytest.mark.parametrize('update, error, message', [
    ({'model_args': {'checkpoint_path': '/etc/passwd'}}, ModelSourceError, 'checkpoint_path is not a model argument'),
    ({'model_args': {'fc_dim': 10 ** 7}}, PretrainedMismatchError, r'fc1.weight is \(64, \d+\) in the weights'),
    ({'model_args': ['fc_dim', 64]}, ModelSourceError, 'not a dict of model arguments'),
    ({'architecture': 'os.system'}, ModelSourceError, 'unknown model'),
    ({'label_names': 'cat'}, ModelSourceError, 'label_names that are not a list'),
    ({'pretrained_cfg': {'mean': 'zero'}}, ModelSourceError, 'not a valid mean'),
])
def test_hostile_hub_config_is_refused(hub, tmp_path, update, error, message):
    hub.state.commit_files('alice/hostile', _hub_files(_tiny(), tmp_path, update))
    with pytest.raises(error, match=message) as e:
        resolve_model('hf-hub:alice/hostile')
    assert e.value.param == 'source'


def test_hub_config_names_no_file_that_is_read(hub, tmp_path):
    secret = tmp_path / 'secret.txt'
    secret.write_text('hf_SECRET_TOKEN\n')
    files = _hub_files(_tiny(num_classes=1), tmp_path,
                       {'pretrained_cfg': {'file': str(secret), 'url': 'http://127.0.0.1:9/x', 'hf_hub_id': 'x/y'},
                        'label_names': None})
    hub.state.commit_files('alice/names-files', files)
    resolved = resolve_model('hf-hub:alice/names-files')
    assert resolved.label_names is None
    cfg = resolved.pretrained_cfg
    assert cfg.get('file') is None and cfg.get('url') != 'http://127.0.0.1:9/x'
    assert cfg['hf_hub_id'] == 'alice/names-files'


# --- recorded checkpoint arguments are data ---------------------------------------------------------------------------

def test_recorded_class_map_and_data_folder_are_never_read(tmp_path, capsys):
    secret = tmp_path / 'token.txt'
    secret.write_text('hf_SECRET_TOKEN_123\n')
    data = tmp_path / 'private-data'
    (data / 'train' / 'SECRET_CLASS_NAME').mkdir(parents=True)
    args = _train_args(num_classes=1, class_map=str(secret), data_dir=str(data), dataset='',
                       checkpoint_path=str(secret), initial_checkpoint=str(secret), resume=str(secret),
                       pretrained=True, pretrained_path=str(secret))
    path = _save_checkpoint(tmp_path / 'one-class.pth.tar', _tiny(num_classes=1), args)
    resolved = resolve_model(path)
    assert resolved.label_names is None and 'label_names' not in resolved.pretrained_cfg
    out = tmp_path / 'hub'
    assert cli(['push', str(path), '--repo-id', 'me/one-class', '--dry-run', str(out)]) == 0
    assert 'label names: none' in capsys.readouterr().out
    for file in out.iterdir():
        if file.is_file():
            text = file.read_bytes()
            assert b'hf_SECRET_TOKEN_123' not in text and b'SECRET_CLASS_NAME' not in text, file.name
    assert 'label_names' not in json.loads((out / 'config.json').read_text())


@pytest.mark.parametrize('model_kwargs, message', [
    ({'width_mult': 0.125, 'fc_dim': 64, 'checkpoint_path': 'x.pth'}, 'checkpoint_path is not a model argument'),
    ({'width_mult': 0.125, 'fc_dim': 64, 'pretrained': True}, 'pretrained is not a model argument'),
    ({'width_mult': 0.125, 'fc_dim': 64, 'pretrained_cfg_overlay': {'file': 'x'}},
     'pretrained_cfg_overlay is not a model argument'),
    ({'width_mult': 0.125, 'fc_dim': 64, 'device': 'cuda'}, 'device is not a model argument'),
    ({'width_mult': 0.125, 'fc_dim': argparse.Namespace()}, 'model arguments must be plain'),
    ({'width_mult': float('nan'), 'fc_dim': 64}, 'model arguments must be plain'),
    ({'width_mult': 0.125, 'fc_dim': 64, 'no_such_arg': 1}, "cannot build prelu_model_a.*no_such_arg"),
])
def test_recorded_kwargs_are_checked(tmp_path, capsys, model_kwargs, message):
    args = _train_args(model_kwargs=model_kwargs)
    path = _save_checkpoint(tmp_path / 'odd.pth.tar', _tiny(), args)
    with pytest.raises((CheckpointError, ConfigError), match=message):
        resolve_model(path)
    assert cli(['slopes', str(path)]) == 2
    assert re.search(message, _one_line_error(capsys))


def test_recorded_architecture_must_be_registered(tmp_path, capsys):
    path = _save_checkpoint(tmp_path / 'odd.pth.tar', _tiny(), _train_args(model='builtins.eval'))
    with pytest.raises(ModelSourceError, match="unknown model 'builtins.eval'"):
        resolve_model(path)
    assert cli(['export-onnx', str(path), '-o', str(tmp_path / 'x.onnx')]) == 2
    assert 'unknown model' in _one_line_error(capsys)
    assert not list(tmp_path.glob('*.onnx'))


def test_huge_recorded_model_fails_fast_without_allocating(tmp_path, capsys):
    # fc_dim 10^7: fc1 alone would be 10^7 x 4032 floats, 161 GB; the file holds the 64-wide model (3 MB)
    path = _save_checkpoint(tmp_path / 'bomb.pth.tar', _tiny(), _train_args(model_kwargs={**TINY, 'fc_dim': 10 ** 7}))
    assert path.stat().st_size < 4 * 2 ** 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(PretrainedMismatchError, match=r'fc1.weight is \(64, 4032\) in the weights, '
                                                      r'\(10000000, 4032\) in the model') as e:
        resolve_model(path)
    assert e.value.param == 'source'
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, grown_mib
    assert cli(['init-report', str(path)]) == 2
    assert 'does not fit prelu_model_a' in _one_line_error(capsys)


def test_malformed_checkpoints_are_one_line_errors(tmp_path, capsys):
    cases = {
        'kwargs-list.pth.tar': {'state_dict': _tiny().state_dict(), 'args': _train_args(model_kwargs=['fc_dim=64'])},
        'state-list.pth.tar': {'state_dict': [1, 2, 3], 'args': _train_args()},
        'state-str.pth.tar': {'state_dict': 'weights', 'args': _train_args()},
        'args-str.pth.tar': {'state_dict': _tiny().state_dict(), 'args': 'model=prelu_model_a'},
    }
    for name, payload in cases.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(CheckpointError):
            resolve_model(tmp_path / name)
        for argv in (['slopes', str(tmp_path / name)],
                     ['push', str(tmp_path / name), '--repo-id', 'me/x', '--dry-run', str(tmp_path / 'out')]):
            assert cli(argv) == 2, (name, argv)
            _one_line_error(capsys)
    assert not (tmp_path / 'out').exists()


def test_non_prelu_checkpoint_is_not_called_a_prelu_net(tmp_path, capsys):
    torch.manual_seed(0)
    resnet = timm.create_model('test_resnet', num_classes=4).eval()
    path = _save_checkpoint(tmp_path / 'resnet.pth.tar', resnet,
                            _train_args(model='test_resnet', model_kwargs={}, num_classes=4))
    out = tmp_path / 'hub'
    assert cli(['push', str(path), '--repo-id', 'me/test-resnet', '--dry-run', str(out)]) == 0
    card = (out / 'README.md').read_text()
    assert 'PReLU-net' in card and 'not a PReLU-net' in card  # said only to deny it
    assert 'A PReLU-net' not in card and 'Delving Deep into Rectifiers' not in card
    assert '- prelu' not in card  # no 'prelu' tag
    assert cli(['slopes', str(path)]) == 2
    assert 'no PReLU layers' in _one_line_error(capsys)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_logits(resolve_model(out).model, x), _logits(resnet, x))


def test_card_links_the_project_url_from_the_package_metadata(tmp_path, monkeypatch):
    import importlib.metadata
    from timm_prelu.hub.card import project_url

    class Meta:
        def __init__(self, urls):
            self.urls = urls

        def get_all(self, key):
            return self.urls if key == 'Project-URL' else None

    monkeypatch.setattr(importlib.metadata, 'metadata', lambda name: Meta(['Repository, https://example.org/repo']))
    assert project_url() == 'https://example.org/repo'
    resolved = resolve_model('prelu_model_a', model_kwargs=TINY, num_classes=2)
    from timm_prelu.hub.card import model_card
    assert '[timm-prelu](https://example.org/repo)' in model_card(resolved.model, None, 'me/x')

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, 'metadata', missing)
    assert project_url() is None
    card = model_card(resolved.model, None, 'me/x')
    assert 'published with timm-prelu.' in card and 'github.com/timm-prelu' not in card


def test_dry_run_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    path = _save_checkpoint(tmp_path / 'ok.pth.tar', _tiny())
    user = tmp_path / 'mine'
    user.mkdir()
    (user / 'config.json').write_text('{}')  # looks like a hub folder, but is the user's
    (user / 'notes.txt').write_text('keep me')
    assert cli(['push', str(path), '--repo-id', 'me/x', '--dry-run', str(user)]) == 2
    assert 'already exists' in _one_line_error(capsys)
    assert (user / 'notes.txt').read_text() == 'keep me' and (user / 'config.json').read_text() == '{}'


# --- one checkpoint, one label source, every command -----------------------------------------------------------------

@pytest.fixture
def recorded(monkeypatch):
    """Every model the resolver hands out during a test, in order."""
    seen = []
    finish = resolve_module._finish

    def spy(*args, **kwargs):
        resolved = finish(*args, **kwargs)
        seen.append(resolved)
        return resolved
    monkeypatch.setattr(resolve_module, '_finish', spy)
    return seen


@pytest.mark.parametrize('label_kind', ['file', 'folder'])
def test_one_checkpoint_one_label_source_every_command(tmp_path, digits_folder, recorded, capsys, label_kind):
    model = _tiny(seed=7)
    checkpoint = _save_checkpoint(tmp_path / 'model_best.pth.tar', model)
    expected = [str(i) for i in range(10)]  # the digits ImageFolder's class folders, naturally sorted
    if label_kind == 'file':
        labels = tmp_path / 'labels.txt'
        labels.write_text('\n'.join(expected) + '\n')
    else:
        labels = digits_folder / 'train'
    image = tmp_path / 'digit.png'
    Image.open(next((digits_folder / 'val' / '3').iterdir())).convert('RGB').save(image)
    x = _batch(1)
    reference = _logits(model, x)

    commands = {
        'push': ['push', str(checkpoint), '--repo-id', 'me/digits', '--dry-run', str(tmp_path / 'hub')],
        'export-onnx': ['export-onnx', str(checkpoint), '-o', str(tmp_path / 'digits.onnx')],
        'predict': ['predict', str(image), '--model', str(checkpoint), '--scales', str(IMG), '--views', 'full',
                    '--topk', '3', '--device', 'cpu'],
        'slopes': ['slopes', str(checkpoint)],
        'init-report': ['init-report', str(checkpoint), '--batch-size', '1'],
    }
    printed = {}
    for name, argv in commands.items():
        del recorded[:]
        assert cli([*argv, '--labels', str(labels)]) == 0, name
        printed[name] = capsys.readouterr().out
        assert len(recorded) == 1, name  # the command resolved its model once, through the resolver
        resolved = recorded[0]
        assert resolved.label_names == expected, name
        assert torch.equal(_logits(resolved.model, x), reference), name

    # what each command wrote or printed carries the same labels and logits
    config = json.loads((tmp_path / 'hub' / 'config.json').read_text())
    assert config['label_names'] == expected
    assert torch.equal(_logits(resolve_model(tmp_path / 'hub').model, x), reference)
    onnx = resolve_model(tmp_path / 'digits.onnx', allow_onnx=True, onnx_options={'providers': 'cpu'})
    assert onnx.label_names == expected
    assert np.allclose(onnx.model.run(x.numpy()), reference.numpy(), atol=1e-4)
    for name in ('slopes', 'init-report'):
        assert 'prelu_model_a from checkpoint: 10 label names (0, 1, 2, 3, 4, ...)' in printed[name], name
    top = re.search(r'digit.png: (\S+) \(([\d.]+)\)', printed['predict'])
    assert top and top.group(1) in expected
    assert cli(['predict', str(image), '--onnx', str(tmp_path / 'digits.onnx'), '--scales', str(IMG),
                '--views', 'full', '--topk', '3']) == 0
    ranked = [re.findall(r'(\S+) \([\d.]+\)', re.search(r'digit.png: (.*)', out).group(1))
              for out in (capsys.readouterr().out, printed['predict'])]
    assert ranked[0] == ranked[1] and len(ranked[0]) == 3  # ONNX Runtime and PyTorch rank the same labels
