"""`timm-prelu slopes`: learned PReLU slopes per layer of a real train.py checkpoint, a .safetensors file or a model."""
import re

import safetensors.torch
import torch

from timm_prelu.cli import main
from timm_prelu.init.slopes import load_slopes


def checkpoint_state_dict(path):
    import argparse
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


def test_slopes_of_a_train_py_checkpoint(trained_run, tmp_path, capsys):
    path = trained_run['dir'] / 'last.pth.tar'
    png = tmp_path / 'slopes.png'
    assert main(['slopes', str(path), '--plot', str(png)]) == 0
    out = capsys.readouterr().out
    assert '| 1 | stem.act |' in out and '| 18 | act2 |' in out  # 16 convs + 2 fc layers, by depth
    assert png.read_bytes()[:4] == b'\x89PNG'
    rows = load_slopes(path)
    state = checkpoint_state_dict(path)
    for row in rows:
        a = state[f'{row.name}.weight']
        assert (row.mean, row.min, row.max) == (float(a.mean()), float(a.min()), float(a.max()))
    assert any(row.min != row.max for row in rows)  # training moved the slopes away from the common 0.25


def test_slopes_of_safetensors_need_the_architecture(trained_run, tmp_path, capsys):
    weights = tmp_path / 'model.safetensors'
    safetensors.torch.save_file(checkpoint_state_dict(trained_run['dir'] / 'model_best.pth.tar'), str(weights))
    assert main(['slopes', str(weights)]) == 2
    assert '--model' in capsys.readouterr().err
    kwargs = [f'{k}={v}' for k, v in trained_run['model_kwargs'].items()] + ['num_classes=10']
    assert main(['slopes', str(weights), '--model', trained_run['model'], '--model-kwargs', *kwargs]) == 0
    assert len(re.findall(r'^\| \d+ \|', capsys.readouterr().out, flags=re.M)) == 18


def test_slopes_of_a_model_name(capsys):
    assert main(['slopes', 'prelu_model_a', '--model-kwargs', 'width_mult=0.125', 'fc_dim=16',
                 'act=prelu_shared']) == 0
    out = capsys.readouterr().out
    assert '| 1 | stem.act | 1 | 0.2500 | 0.2500 | 0.2500 |' in out  # one shared slope per layer, initial 0.25


def test_clear_errors(trained_run, tmp_path, capsys):
    corrupt = tmp_path / 'broken.pth.tar'
    corrupt.write_bytes((trained_run['dir'] / 'last.pth.tar').read_bytes()[:1000])
    cases = [
        ([str(tmp_path / 'missing.pth.tar')], 'no such file or folder'),
        ([str(corrupt)], 'corrupt or truncated'),
        (['no_such_model'], 'unknown model'),
        ([str(tmp_path)], 'a folder without config.json'),
        (['prelu_model_a', '--model-kwargs', 'act=relu', 'width_mult=0.125', 'fc_dim=16'], 'no PReLU layers'),
        ([str(trained_run['dir'] / 'last.pth.tar'), '--ema'], '--use-ema: ' + str(trained_run['dir'] / 'last.pth.tar')
         + ' has no EMA weights'),
    ]
    for argv, message in cases:
        assert main(['slopes', *argv]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and message in err, err
