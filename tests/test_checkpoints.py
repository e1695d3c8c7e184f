"""Reading timm train.py checkpoints safely: weights, recorded architecture, EMA, and errors users can act on."""
import argparse
import pathlib

import pytest
import safetensors.torch
import torch

from timm_prelu.sources.checkpoints import create_model_from_checkpoint, label_names_from_args, read_checkpoint
from timm_prelu.errors import UserError


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

    with pytest.raises(UserError, match='no EMA weights.*--model-ema.*drop --ema'):
        read_checkpoint(trained_run['dir'] / 'last.pth.tar', use_ema=True)


def test_safetensors_with_and_without_config(trained_run, tmp_path):
    model = create_model_from_checkpoint(read_checkpoint(trained_run['dir'] / 'last.pth.tar'))
    path = tmp_path / 'weights.safetensors'
    safetensors.torch.save_file(model.state_dict(), path)

    ckpt = read_checkpoint(path)
    with pytest.raises(UserError, match='does not record its architecture: pass --model'):
        create_model_from_checkpoint(ckpt)
    rebuilt = create_model_from_checkpoint(ckpt, trained_run['model'], trained_run['model_kwargs'])
    assert rebuilt.num_classes == trained_run['num_classes']  # read from the classifier's weight
    x = torch.randn(2, 3, trained_run['img_size'], trained_run['img_size'])
    assert torch.equal(rebuilt(x), model.eval()(x))


def _truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])
    return dst


@pytest.mark.parametrize('make, message', [
    (lambda run, tmp: tmp / 'missing.pth.tar', 'checkpoint not found.*pass a checkpoint written by timm train.py'),
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


@pytest.mark.parametrize('model_name, kwargs, message', [
    (None, {'num_classes': 7},
     r'head.weight is \(10, 64\) in the checkpoint, \(7, 64\) in the model.*num_classes=10'),
    (None, {'width_mult': 0.25}, r'stem.conv.weight is \(12, 3, 7, 7\) in the checkpoint, \(24, 3, 7, 7\).*'
                                 r'pass the --model and --model-kwargs it was trained with'),
    ('prelu_model_b', {}, r'missing from the checkpoint: stages.0.6.conv.weight.*--model'),
    ('resnet_does_not_exist', {}, 'unknown model'),
    (None, {'fc_dim': 'wide'}, r'cannot build prelu_model_a.*fix --model-kwargs'),
])
def test_architecture_mismatch_names_keys_shapes_and_fix(trained_run, model_name, kwargs, message):
    ckpt = read_checkpoint(trained_run['dir'] / 'model_best.pth.tar')
    with pytest.raises(UserError, match=message):
        create_model_from_checkpoint(ckpt, model_name, kwargs)


def test_label_names_from_train_args(digits_folder, tmp_path):
    assert label_names_from_args({'data_dir': str(digits_folder), 'train_split': 'train', 'dataset': ''}) == \
        [str(i) for i in range(10)]
    class_map = tmp_path / 'classes.txt'
    class_map.write_text('cat\ndog\n\nbird\n')
    args = {'class_map': str(class_map), 'data_dir': str(digits_folder)}
    assert label_names_from_args(args) == ['cat', 'dog', 'bird']
    assert label_names_from_args({'dataset': 'torch/cifar10', 'data_dir': str(tmp_path)}) is None
    assert label_names_from_args({'data_dir': str(tmp_path / 'gone')}) is None
