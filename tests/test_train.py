"""Training with upstream timm train.py: real CPU runs, resume, the launcher, the recipes and train.py lookup."""
import argparse
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import timm

import timm_prelu  # noqa: F401
from timm_prelu.cli import main as cli_main
from timm_prelu.errors import ConfigError, UserError
from timm_prelu.training.launcher import (
    build_train_command, find_recipe, list_recipes, load_recipe, parse_train_args,
    train_option_names)

from conftest import REPO_ROOT, TINY_MODEL, train_py_args

RECIPES = ['prelu_model_a', 'prelu_model_b', 'prelu_model_c']


def load_checkpoint(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):  # train.py stores its args in checkpoints
        return torch.load(path, map_location='cpu', weights_only=True)


def read_summary(run_dir: Path) -> list:
    with open(run_dir / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def slopes(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if k.endswith('act.weight') or k.startswith(('act1.', 'act2.'))}


def conv_fc_weights(state_dict: dict) -> torch.Tensor:
    return torch.cat([v.flatten() for k, v in state_dict.items() if v.dim() > 1])


# --- upstream train.py, single process on CPU (the shared 2-epoch run) ---

def test_train_py_loss_falls_and_writes_checkpoints(trained_run):
    run = trained_run['dir']
    rows = read_summary(run)
    assert [int(r['epoch']) for r in rows] == [0, 1]
    # 28 steps from chance: the mean loss fell by 0.005-0.011 at seeds 0-3 (AMD EPYC, with its AVX512 and with AVX2
    # kernels alike), as the net first learns the uniform prior; test_train_py_learns_the_slopes shows the learning
    assert float(rows[1]['train_loss']) < float(rows[0]['train_loss'])
    for name in ('last.pth.tar', 'model_best.pth.tar', 'checkpoint-0.pth.tar', 'checkpoint-1.pth.tar'):
        assert (run / name).is_file(), name
    checkpoint = load_checkpoint(run / 'last.pth.tar')
    assert checkpoint['epoch'] == 1 and checkpoint['arch'] == TINY_MODEL
    model = timm.create_model(TINY_MODEL, num_classes=trained_run['num_classes'], **trained_run['model_kwargs'])
    model.load_state_dict(checkpoint['state_dict'])  # strict: the checkpoint is this plugin's model


def test_train_py_learns_the_slopes(trained_run):
    state = load_checkpoint(trained_run['dir'] / 'last.pth.tar')['state_dict']
    learned = slopes(state)
    assert len(learned) == 18  # every PReLU of model A
    for name, a in learned.items():  # each layer's slopes left their 0.25 init, and were not decayed to 0
        assert (a - 0.25).abs().max() > 1e-4, name
        assert a.min() > 0.1, name


def test_train_py_resume_continues(trained_run, tmp_path):
    resumed_from = trained_run['dir'] / 'last.pth.tar'
    proc = subprocess.run(
        [sys.executable, os.environ['TIMM_TRAIN_SCRIPT'],
         *train_py_args(trained_run['data'], tmp_path, epochs=3, experiment='resumed'), '--resume', str(resumed_from)],
        capture_output=True, text=True, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert 'Restoring optimizer state from checkpoint' in log
    assert 'Train: 2 [' in log and 'Train: 0 [' not in log and 'Train: 1 [' not in log
    rows = read_summary(tmp_path / 'resumed')
    # one epoch's loss change is within the noise of this tiny run; the weight step below shows the continuation
    assert [int(r['epoch']) for r in rows] == [2] and math.isfinite(float(rows[0]['train_loss']))

    before = load_checkpoint(resumed_from)['state_dict']
    after = load_checkpoint(tmp_path / 'resumed' / 'last.pth.tar')
    assert after['epoch'] == 2
    assert any(not torch.equal(after['state_dict'][k], v) for k, v in slopes(before).items())
    # A continuation, not a restart: one more epoch moved the weights far less than a fresh init is away.
    torch.manual_seed(1)
    fresh = timm.create_model(TINY_MODEL, num_classes=trained_run['num_classes'], **trained_run['model_kwargs'])
    step = (conv_fc_weights(after['state_dict']) - conv_fc_weights(before)).norm()
    restart = (conv_fc_weights(fresh.state_dict()) - conv_fc_weights(before)).norm()
    assert 0 < step < 0.1 * restart


# --- the launcher: timm-prelu train ---

def test_launcher_runs_train_py_with_recipe_and_flags(digits_folder, tmp_path):
    flags = train_py_args(digits_folder, tmp_path, epochs=1, experiment='launched')
    # the recipe sets the optimizer, schedule and augmentation; keep only what a tiny CPU run must override
    for recipe_flag in ('--opt', '--lr', '--momentum', '--weight-decay', '--sched', '--warmup-epochs',
                        '--device-modules'):
        i = flags.index(recipe_flag)
        del flags[i:i + 2]
    proc = subprocess.run(
        [sys.executable, '-m', 'timm_prelu', 'train', '--recipe', 'prelu_model_a', '--nproc-per-node', '1',
         '--', *flags], capture_output=True, text=True, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert 'torch.distributed.run --nproc_per_node=1' in log
    # the recipe's lr 1e-2 at batch 128, scaled by train.py to the real batch of 16
    assert 'Learning rate (0.00125) calculated from base learning rate (0.01)' in log
    args = yaml.safe_load((tmp_path / 'launched' / 'args.yaml').read_text())
    assert args['device_modules'] == ['timm_prelu']
    assert (args['opt'], args['momentum'], args['weight_decay']) == ('momentum', 0.9, 5e-4)
    assert (args['sched'], args['decay_rate'], args['drop'], args['smoothing']) == ('multistep', 0.1, 0.5, 0.0)
    assert args['decay_milestones'] == [41, 61]
    assert (args['batch_size'], args['epochs'], args['img_size']) == (16, 1, 32)  # pass-through wins
    assert (tmp_path / 'launched' / 'last.pth.tar').is_file()


def test_launcher_builds_the_torchrun_command(train_script):
    command = build_train_command(['/data', '-b', '32', '--model-kwargs', 'fc_dim=64'], recipe='prelu_model_c',
                                  script=train_script, nproc_per_node=4, python='python')
    script_at = command.index(str(train_script))
    assert command[:script_at] == ['python', '-m', 'torch.distributed.run', '--nproc_per_node=4',
                                   '--local_ranks_filter=0', '--standalone']
    assert command[script_at + 1:] == [
        '--config', str(find_recipe('prelu_model_c')), '/data', '-b', '32', '--model-kwargs', 'fc_dim=64',
        '--device-modules', 'timm_prelu']  # global batch 4 x 32 = 128: the paper's, nothing to rescale

    multi = build_train_command(['--device-modules', 'torch_npu', '--min-lr', '1e-5'], recipe='prelu_model_a',
                                script=train_script, nproc_per_node=8, nnodes=2, node_rank=1,
                                master_addr='node0', python='python')
    assert '--nnodes=2' in multi and '--node_rank=1' in multi and '--master_addr=node0' in multi
    # timm_prelu joins the user's own device modules; their --min-lr is kept as given
    assert multi[-5:] == ['--device-modules', 'timm_prelu', 'torch_npu', '--min-lr', '1e-5']
    assert '--standalone' not in multi

    plain = build_train_command(['--data-dir', '/data'], script=train_script, python='python')
    assert plain[plain.index(str(train_script)) + 1:] == ['--data-dir', '/data', '--device-modules', 'timm_prelu']


@pytest.mark.parametrize('kwargs, message, param', [
    (dict(train_args=['--config', 'x.yaml'], recipe='prelu_model_a'), 'not both', 'recipe'),
    (dict(recipe='prelu_model_z'), 'prelu_model_a, prelu_model_b, prelu_model_c', 'recipe'),
    (dict(nnodes=2), 'needs master_addr', 'master_addr'),
    (dict(nproc_per_node=0), 'at least 1', 'nproc_per_node'),
])
def test_launcher_rejects_bad_input(kwargs, message, param, train_script):
    with pytest.raises(ConfigError, match=message) as e:
        build_train_command(script=train_script, **kwargs)
    assert e.value.param == param


@pytest.mark.parametrize('text, message', [
    ('opt: momentum\nweight_dacay: 5.0e-4\n', 'does not know .* weight_dacay'),
    ('- opt\n- momentum\n', 'must be a YAML mapping'),
    ('opt: [momentum\n', 'not valid YAML'),
])
def test_launcher_rejects_bad_recipe(text, message, train_script, tmp_path):
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text(text)
    with pytest.raises(UserError, match=message):
        build_train_command(recipe=recipe, script=train_script)


def test_launcher_rejects_unknown_train_py_flag(train_script, capsys):
    assert cli_main(['train', '--timm-script', str(train_script), '--dry-run', '--', '--no-such-flag']) == 2
    err = capsys.readouterr().err
    assert 'unrecognized arguments: --no-such-flag' in err
    assert err.strip().splitlines()[-1].startswith('timm-prelu train: error: ')


def test_distributed_train_sh(tmp_path):
    script = REPO_ROOT / 'train' / 'distributed_train.sh'
    proc = subprocess.run(['bash', str(script)], capture_output=True, text=True)
    assert proc.returncode == 2 and 'usage:' in proc.stderr
    # a stand-in interpreter that prints its arguments shows the launcher call (the launcher is tested above)
    print_args = tmp_path / 'print_args'
    print_args.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    print_args.chmod(0o755)
    proc = subprocess.run(['bash', str(script), '2', '--recipe', 'prelu_model_b', '--', '--data-dir', '/my data'],
                          capture_output=True, text=True, env={**os.environ, 'PYTHON': str(print_args)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        '-m', 'timm_prelu', 'train', '--nproc-per-node', '2', '--recipe', 'prelu_model_b', '--',
        '--data-dir', '/my data']


# --- where train.py comes from: tests/test_train_script.py ---


# --- the recipes ---

def test_recipes_are_bundled_and_in_train_dir():
    assert list_recipes() == RECIPES
    for name in RECIPES:
        in_train_dir = REPO_ROOT / 'train' / f'{name}.yaml'
        assert in_train_dir.read_text() == find_recipe(name).read_text()


@pytest.mark.parametrize('name', RECIPES)
def test_recipe_schedule_is_fixed_and_shared_by_the_relu_twin(name, train_script):
    """timm's own scheduler, built from the recipe: 1e-2, 1e-3, 1e-4 from (0-based) epochs 0, 40, 60 of 80,
    whatever the validation metric does, so a PReLU model and its ReLU twin (same recipe, act=relu) switch at the
    same epochs."""
    from timm.scheduler import create_scheduler
    rates = {}
    for act, metric in (('prelu', lambda e: 50.0 + e), ('relu', lambda e: 10.0)):  # improving vs plateaued
        args = parse_train_args(['--config', str(find_recipe(name)), '--model-kwargs', f'act={act}'], train_script)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr_base)
        scheduler, epochs = create_scheduler(args, optimizer)
        lrs = []
        for epoch in range(epochs):
            lrs.append(optimizer.param_groups[0]['lr'])
            scheduler.step(epoch + 1, metric(epoch))
        rates[act] = lrs
    assert len(rates['prelu']) == 80
    assert rates['prelu'] == rates['relu']
    expected = [1e-2] * 40 + [1e-3] * 20 + [1e-4] * 20
    assert rates['prelu'] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('name', RECIPES)
def test_recipe_is_the_papers_training_in_train_py(name, train_script):
    recipe = load_recipe(name)
    args = parse_train_args(['--config', str(find_recipe(name))], train_script)
    assert set(recipe) <= train_option_names(train_script)  # train.py would silently ignore any other key
    assert args.model == name
    assert (args.opt, args.momentum, args.weight_decay) == ('momentum', 0.9, 5e-4)
    assert (args.lr, args.lr_base, args.lr_base_size, args.lr_base_scale) == (None, 0.01, 128, 'linear')
    assert (args.sched, args.decay_milestones, args.decay_rate, args.warmup_epochs, args.epochs) == \
           ('multistep', [41, 61], 0.1, 0, 80)
    assert args.drop == 0.5
    assert (args.ratio, args.hflip) == ([1.0, 1.0], 0.5)
    assert args.scale == pytest.approx([0.75 * (224 / 512) ** 2, 0.75 * (224 / 256) ** 2], abs=1e-4)
    assert (args.smoothing, args.mixup, args.cutmix, args.reprob, args.aa) == (0.0, 0.0, 0.0, 0.0, None)
    assert not args.model_ema and not args.amp
