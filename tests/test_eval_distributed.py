"""`timm-prelu eval` under torchrun: two gloo processes on the CPU give the files one process gives.

The sorted listing (20 digits and a corrupt PNG: 21 entries, so the two shards differ in size) is scored by one
process in this interpreter and by `torchrun --nproc-per-node 2 -m timm_prelu eval` with the same model
checkpoint; every deterministic output file must be byte-identical and the per-image predictions equal. One
thread per process on both sides, so the floating-point sums are the same. A destination the tool must refuse
stops both ranks with an error instead of leaving one waiting.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from conftest import REPO_ROOT
from timm_prelu.cli import main
from timm_prelu.demo.datasets import digits_images

KWARGS = {'width_mult': 0.125, 'fc_dim': 64}
SAME_BYTES = ('table.md', 'table.csv', 'predictions.csv', 'skipped.txt', 'class_to_idx.json')
TIMEOUT_S = 240


@pytest.fixture(scope='module', autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A 21-entry ImageFolder (one entry a truncated PNG) and a narrow model A checkpoint in train.py's format."""
    root = tmp_path_factory.mktemp('disteval')
    data = root / 'val'
    images, labels, names = digits_images(32)
    for i in range(20):
        (data / names[labels[i]]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(data / names[labels[i]] / f'{i:03d}.png')
    good = sorted((data / '3').glob('*.png'))[0].read_bytes()
    (data / '3' / '100_broken.png').write_bytes(good[:len(good) // 2])
    torch.manual_seed(3)
    model = timm.create_model('prelu_model_a', num_classes=10, **KWARGS)
    args = argparse.Namespace(model='prelu_model_a', model_kwargs=dict(KWARGS), num_classes=10, img_size=32,
                              input_size=None, in_chans=None, mean=None, std=None, interpolation='', crop_pct=None)
    ckpt = root / 'model_best.pth.tar'
    torch.save({'epoch': 1, 'arch': 'prelu_model_a', 'state_dict': model.state_dict(), 'args': args,
                'version': 2}, ckpt)
    return root, data, ckpt


def _eval_args(data: Path, ckpt: Path, out: Path):
    return ['eval', '--data', str(data), '--model', str(ckpt), '--scales', '32', '48', '--views', 'full', 'dense',
            '--device', 'cpu', '--out', str(out), '--no-progress']


def _torchrun(args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])))
    for var in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(var, None)
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
                           '-m', 'timm_prelu', *args], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd,
                          env=env)


@pytest.fixture(scope='module')
def runs(setup):
    root, data, ckpt = setup
    single = root / 'single'
    assert main(_eval_args(data, ckpt, single)) == 0
    proc = _torchrun(_eval_args(data, ckpt, root / 'two'), root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return single, root / 'two', proc


def test_two_processes_write_the_files_one_process_writes(runs):
    single, two, _ = runs
    for name in SAME_BYTES:
        assert (two / name).read_bytes() == (single / name).read_bytes(), name
    assert (two / 'table.png').is_file()
    with np.load(single / 'predictions.npz') as a, np.load(two / 'predictions.npz') as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert len(a['paths']) == 20  # every readable image once, in listing order
        assert list(a['paths']) == sorted(a['paths'], key=lambda p: (int(p.split('/')[0]), p))
    assert (single / 'skipped.txt').read_text().startswith('3/100_broken.png\t')


def test_the_run_reports_world_size_and_images_per_rank(runs):
    _, _, proc = runs
    # 21 listed entries: rank 0 takes 11 (one of them the corrupt file), rank 1 takes 10
    assert proc.stdout.count('world size 2 (gloo): images per rank 11, 10') == 1, proc.stdout
    assert proc.stdout.count('20 images evaluated, 1 skipped') == 1  # printed by rank 0 only
    assert proc.stdout.count('predictor: ') == 1


def test_a_refused_destination_stops_every_rank(setup, tmp_path):
    _, data, ckpt = setup
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'notes.txt').write_text('not written by timm-prelu')
    proc = _torchrun(_eval_args(data, ckpt, out), tmp_path)  # a hang would raise TimeoutExpired
    assert proc.returncode != 0
    # rank 0's own error, and rank 1's report of it (the two ranks' lines may interleave: count messages)
    assert proc.stderr.count('timm-prelu eval: error: ') == 2, proc.stderr[-3000:]
    assert proc.stderr.count(f'--out {out} already exists') == 2
    assert proc.stderr.count('rank 0 failed while checking the output folder') == 1
    assert sorted(p.name for p in out.iterdir()) == ['notes.txt']


def test_shards_are_disjoint_and_cover_the_listing():
    from timm_prelu.inference.distributed import Ranks
    shards = [list(Ranks(rank=r, world_size=3, backend='gloo').shard(10)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(s) for s in shards] == Ranks(world_size=3).shard_sizes(10) == [4, 3, 3]


def test_torchrun_environment_decides_whether_the_run_is_distributed():
    from timm_prelu.errors import ConfigError
    from timm_prelu.inference.distributed import torchrun_env
    assert torchrun_env({}) is None  # a plain run needs none of torchrun's variables
    assert torchrun_env({'RANK': '1', 'WORLD_SIZE': '4', 'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '2'}) == \
        {'RANK': 1, 'WORLD_SIZE': 4, 'LOCAL_RANK': 1, 'LOCAL_WORLD_SIZE': 2}
    for bad in ({'RANK': 'x', 'WORLD_SIZE': '2'}, {'RANK': '2', 'WORLD_SIZE': '2'}):
        with pytest.raises(ConfigError, match='torchrun') as e:
            torchrun_env(bad)
        assert e.value.param == 'environment'
