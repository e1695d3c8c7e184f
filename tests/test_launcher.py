"""`timm-prelu train` checks what it can before any process starts, and a failure in the workers shows once."""
import subprocess
import sys

import pytest
import torch

from timm_prelu.cli import main as cli_main
from timm_prelu.errors import ConfigError, DatasetError
from timm_prelu.training.launcher import check_environment, parse_train_args

from conftest import train_py_args


def _train(train_script, *flags):
    return cli_main(['train', '--timm-script', str(train_script), '--', *flags])


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ''  # nothing started: the torchrun command is printed only when it runs
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith('timm-prelu train: error: ')
    return lines[0]


def test_missing_data_folder_is_one_line_before_any_process(train_script, tmp_path, capsys):
    missing = tmp_path / 'imagenet'
    assert _train(train_script, '--data-dir', str(missing), '--device', 'cpu') == 2
    assert f'data folder {missing} does not exist' in _one_line_error(capsys)
    assert _train(train_script, '--device', 'cpu') == 2
    assert 'no data folder' in _one_line_error(capsys)


def test_data_folder_must_hold_the_splits_train_py_reads(train_script, digits_folder, tmp_path, capsys):
    (tmp_path / 'train' / 'cat').mkdir(parents=True)
    assert _train(train_script, '--data-dir', str(tmp_path), '--device', 'cpu') == 2
    assert "no folder for its 'validation' split" in _one_line_error(capsys)  # train.py's default split name
    (tmp_path / 'val').mkdir()
    assert _train(train_script, '--data-dir', str(tmp_path), '--device', 'cpu') == 2
    assert f"'validation' split {tmp_path / 'val'} has no class folders" in _one_line_error(capsys)
    # the tests' own digits folder (train/, val/) passes, with train.py's default or its own split names
    for flags in ([], ['--val-split', 'val']):
        args = parse_train_args(['--data-dir', str(digits_folder), '--device', 'cpu', *flags])
        check_environment(args, nproc_per_node=2)


def test_cuda_processes_need_cuda_devices(train_script, digits_folder, monkeypatch):
    args = parse_train_args(['--data-dir', str(digits_folder)])  # train.py's default device: cuda
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    with pytest.raises(ConfigError, match="sees no CUDA device.*--device cpu") as e:
        check_environment(args, nproc_per_node=8)
    assert e.value.param == 'train_args'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    with pytest.raises(ConfigError, match='nproc_per_node=8 processes need one CUDA device each.* has 2') as e:
        check_environment(args, nproc_per_node=8)
    assert e.value.param == 'nproc_per_node'
    check_environment(args, nproc_per_node=2)
    # asked for explicitly, CPU processes (gloo) need no GPU
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    check_environment(parse_train_args(['--data-dir', str(digits_folder), '--device', 'cpu']), nproc_per_node=8)


def test_data_errors_are_typed(train_script, tmp_path):
    args = parse_train_args(['--data-dir', str(tmp_path / 'nope'), '--device', 'cpu'])
    with pytest.raises(DatasetError) as e:
        check_environment(args, nproc_per_node=1)
    assert e.value.param == 'train_args' and isinstance(e.value, ValueError)


def test_a_failure_in_every_worker_is_reported_once(train_script, digits_folder, tmp_path):
    # two CPU processes (gloo) that both fail building the model: one traceback, one summary line
    flags = train_py_args(digits_folder, tmp_path, epochs=1)
    flags[flags.index('--model-kwargs') + 1] = 'no_such_option=1'
    proc = subprocess.run([sys.executable, '-m', 'timm_prelu', 'train', '--timm-script', str(train_script),
                           '--nproc-per-node', '2', '--', *flags], capture_output=True, text=True, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-4000:]
    assert log.count("unexpected keyword argument 'no_such_option'") == 1, log[-6000:]
    assert proc.stderr.strip().splitlines()[-1].startswith('timm-prelu train: training failed (exit 1)')
