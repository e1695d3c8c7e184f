"""Reading timm train.py checkpoints safely: weights, recorded architecture, EMA, and errors users can act on."""
import argparse
import pathlib

import pytest
import safetensors.torch
import torch

from timm_prelu.errors import CheckpointError, ConfigError, ModelSourceError, PretrainedMismatchError, UserError
from timm_prelu.sources.checkpoints import create_model_from_checkpoint, read_checkpoint


def _raw(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def test_reads_what_train_py_recorded(trained_run):
    path = trained_run['dir'] / 'model_best.pth.tar'
    ckpt = read_checkpoint(path)
    raw = _raw(path)
    assert ckpt.model_name == trained_run['model']
    assert ckpt.model_kwargs == {**trained_run['model_kwargs'], 'num_classes': trained_run['num_classes']}
    assert ckpt.epoch == raw['epoch'] and ckpt.metric == pytest.approx(raw['metric'])
    assert ckpt.args['img_size'] == trained_run['img_size']
    model = create_model_from_checkpoint(ckpt)
    assert not model.training
    for key, value in raw['state_dict'].items():
        assert torch.equal(model.state_dict()[key], value), key


def test_ema_weights_and_ddp_prefix(trained_run, tmp_path):
    raw = _raw(trained_run['dir'] / 'last.pth.tar')
    ema = {f'module.{k}': v + 1.0 for k, v in raw['state_dict'].items()}  # as saved from a DDP-wrapped model
    raw['state_dict_ema'] = ema
    raw['state_dict'] = {f'module.{k}': v for k, v in raw['state_dict'].items()}
    path = tmp_path / 'last.pth.tar'
    torch.save(raw, path)

    model = create_model_from_checkpoint(read_checkpoint(path, use_ema=True))
    for key, value in ema.items():
        assert torch.equal(model.state_dict()[key[len('module.'):]], value)
    plain = read_checkpoint(path)
    assert not any(k.startswith('module.') for k in plain.state_dict)

    with pytest.raises(ConfigError, match='no EMA weights.*--model-ema.*use_ema off') as e:
        read_checkpoint(trained_run['dir'] / 'last.pth.tar', use_ema=True)
    assert e.value.param == 'use_ema'


def test_safetensors_with_and_without_config(trained_run, tmp_path):
    model = create_model_from_checkpoint(read_checkpoint(trained_run['dir'] / 'last.pth.tar'))
    path = tmp_path / 'weights.safetensors'
    safetensors.torch.save_file(model.state_dict(), path)

    ckpt = read_checkpoint(path)
    with pytest.raises(ModelSourceError, match='does not record its architecture: give the model name') as e:
        create_model_from_checkpoint(ckpt)
    assert e.value.param == 'model_name'
    rebuilt = create_model_from_checkpoint(ckpt, trained_run['model'], trained_run['model_kwargs'])
    assert rebuilt.num_classes == trained_run['num_classes']  # read from the classifier's weight
    x = torch.randn(2, 3, trained_run['img_size'], trained_run['img_size'])
    assert torch.equal(rebuilt(x), model.eval()(x))


def _truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])
    return dst


@pytest.mark.parametrize('make, message', [
    (lambda run, tmp: tmp / 'missing.pth.tar', 'checkpoint not found.*give a checkpoint written by timm train.py'),
    (lambda run, tmp: run, 'is a folder.*model_best.pth.tar'),
    (lambda run, tmp: _truncated(run / 'model_best.pth.tar', tmp / 'cut.pth.tar'), 'corrupt or truncated'),
    (lambda run, tmp: (tmp / 'noise.pth.tar').write_bytes(b'\x80\x02noise' * 50) and tmp / 'noise.pth.tar',
     'corrupt or truncated'),
    (lambda run, tmp: torch.save({'state_dict': {}, 'path': pathlib.PurePosixPath('/x')}, tmp / 'p.pth.tar')
     or tmp / 'p.pth.tar', 'pickled pathlib.PurePosixPath, which is not allowed.*re-save just its weights'),
    (lambda run, tmp: torch.save([1, 2], tmp / 'list.pth.tar') or tmp / 'list.pth.tar', 'holds a list'),
])
def test_unreadable_checkpoints_name_problem_and_fix(trained_run, tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        read_checkpoint(make(trained_run['dir'], tmp_path))


def test_truncated_safetensors(trained_run, tmp_path):
    model = create_model_from_checkpoint(read_checkpoint(trained_run['dir'] / 'last.pth.tar'))
    path = tmp_path / 'model.safetensors'
    safetensors.torch.save_file(model.state_dict(), path)
    with pytest.raises(UserError, match='not a readable .safetensors file.*corrupt or truncated'):
        read_checkpoint(_truncated(path, tmp_path / 'cut.safetensors'))


@pytest.mark.parametrize('model_name, kwargs, error, message', [
    (None, {'num_classes': 7}, PretrainedMismatchError,
     r'head.weight is \(10, 64\) in the weights, \(7, 64\) in the model.*num_classes=10'),
    (None, {'width_mult': 0.25}, PretrainedMismatchError,
     r'stem.conv.weight is \(12, 3, 7, 7\) in the weights, \(24, 3, 7, 7\).*model name and model kwargs they were '
     r'trained with.*the weights record prelu_model_a'),
    ('prelu_model_b', {}, PretrainedMismatchError, r'missing from the weights: stages.0.6.conv.weight'),
    ('resnet_does_not_exist', {}, ModelSourceError, 'unknown model'),
    (None, {'fc_dim': 'wide'}, ConfigError, r'cannot build prelu_model_a.*fc_dim=\'wide\''),
])
def test_architecture_mismatch_names_keys_shapes_and_fix(trained_run, model_name, kwargs, error, message):
    ckpt = read_checkpoint(trained_run['dir'] / 'model_best.pth.tar')
    with pytest.raises(error, match=message) as e:
        create_model_from_checkpoint(ckpt, model_name, kwargs)
    assert e.value.param in ('model_kwargs', 'model_name')
    if error is ConfigError:  # the model's own complaint is kept as the cause
        assert isinstance(e.value.__cause__, TypeError)
    assert '--' not in str(e.value).replace('--model-ema', '')  # library wording: no command-line flags


@pytest.mark.parametrize('state, message', [
    ([1, 2], '"state_dict" is a list, not a mapping of tensor names'),
    ({'conv.weight': 'not a tensor'}, 'entries that are not named tensors'),
    ({}, 'is empty'),
])
def test_state_dict_that_is_not_a_mapping_of_tensors(tmp_path, state, message):
    path = tmp_path / 'odd.pth.tar'
    torch.save({'state_dict': state}, path)
    with pytest.raises(CheckpointError, match=message) as e:
        read_checkpoint(path)
    assert e.value.param == 'source'


@pytest.mark.parametrize('args, message', [
    (argparse.Namespace(model='prelu_model_a', model_kwargs=[('width_mult', 0.125)]), 'model_kwargs as a list'),
    (argparse.Namespace(model='prelu_model_a', model_kwargs='width_mult=0.125'), 'model_kwargs as a str'),
    (argparse.Namespace(model=['prelu_model_a'], model_kwargs={}), 'architecture as a list'),
    (argparse.Namespace(model='prelu_model_a', num_classes='10'), "num_classes='10', which is not a count"),
    (argparse.Namespace(model='prelu_model_a', num_classes=-1), 'num_classes=-1, which is not a count'),
    (['not', 'a', 'namespace'], 'records its arguments as a list'),
])
def test_malformed_recorded_arguments(trained_run, tmp_path, args, message):
    path = tmp_path / 'odd.pth.tar'
    torch.save({'state_dict': _raw(trained_run['dir'] / 'last.pth.tar')['state_dict'], 'args': args}, path)
    with pytest.raises(CheckpointError, match=message) as e:
        read_checkpoint(path)
    assert e.value.param == 'source'
