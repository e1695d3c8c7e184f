"""Distributed data parallel on CPU: torchrun --nproc_per_node=2, gloo, timm's model / optimizer factories."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import timm

import timm_prelu  # noqa: F401

WORKER = Path(__file__).resolve().parent / 'ddp_worker.py'
MODEL = 'prelu_model_a'
MODEL_KWARGS = dict(width_mult=0.125, fc_dim=64, num_classes=10, drop_rate=0.5)


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp('ddp')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--standalone', str(WORKER),
         '--out', str(out), '--steps', '3'],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(out / f'rank{r}.pt', weights_only=True) for r in range(2)]


def test_each_rank_trains_on_its_own_data(ranks):
    assert [r['world_size'] for r in ranks] == [2, 2]
    assert not torch.equal(ranks[0]['inputs'], ranks[1]['inputs'])
    assert not torch.allclose(ranks[0]['local_grads']['head.weight'], ranks[1]['local_grads']['head.weight'])


def test_gradients_are_averaged_over_ranks(ranks):
    # DDP started both ranks from rank 0's weights (each rank drew its own init).
    for name, value in ranks[0]['init'].items():
        assert torch.equal(value, ranks[1]['init'][name]), name
    # The single-process gradient of the full (two-shard) batch, computed here.
    model = timm.create_model(MODEL, **MODEL_KWARGS).eval()
    model.load_state_dict(ranks[0]['init'])
    inputs = torch.cat([r['inputs'] for r in ranks])
    targets = torch.cat([r['targets'] for r in ranks])
    F.cross_entropy(model(inputs), targets).backward()
    for name, p in model.named_parameters():
        ddp0, ddp1 = ranks[0]['ddp_grads'][name], ranks[1]['ddp_grads'][name]
        assert torch.equal(ddp0, ddp1), name
        mean_local = (ranks[0]['local_grads'][name] + ranks[1]['local_grads'][name]) / 2
        torch.testing.assert_close(ddp0, mean_local, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(ddp0, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_ranks_hold_identical_weights_and_slopes_after_steps(ranks):
    final0, final1 = ranks[0]['final'], ranks[1]['final']
    assert final0.keys() == final1.keys()
    for name in final0:
        assert torch.equal(final0[name], final1[name]), name
    slopes = [n for n in final0 if n.endswith('act.weight') or n.startswith(('act1.', 'act2.'))]
    assert len(slopes) == 18
    for name in slopes:  # the slopes trained (so identical means synchronised, not untouched)
        assert not torch.equal(final0[name], ranks[0]['init'][name]), name
