"""torchrun worker for test_ddp.py: data-parallel PReLU-net training on CPU (gloo) with timm's components.

Each rank takes its own shard of the digits, records its local gradient (its shard alone) and the DDP gradient,
then trains a few steps with dropout on (different masks per rank) and saves its final weights to
``--out/rank{R}.pt``.
"""
import argparse
import copy
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import timm
from timm.optim import create_optimizer_v2
from timm.utils import init_distributed_device

import timm_prelu  # noqa: F401  (registers the models, as train.py --device-modules does)
from timm_prelu.demo.datasets import digits_images

MODEL = 'prelu_model_a'
MODEL_KWARGS = dict(width_mult=0.125, fc_dim=64, num_classes=10, drop_rate=0.5)
IMG_SIZE = 32


def shard(images: np.ndarray, labels: np.ndarray, rank: int, world_size: int, step: int, per_rank: int):
    """This rank's batch for ``step``: disjoint across ranks and steps, normalised like timm's loader."""
    order = np.random.default_rng(0).permutation(len(images))
    start = (step * world_size + rank) * per_rank
    idx = order[start:start + per_rank]
    x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(timm.data.IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(timm.data.IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(labels[idx])


def gradients(model: torch.nn.Module):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--per-rank', type=int, default=8)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()

    init_distributed_device(args)  # as train.py does: gloo on CPU, rank and world size from torchrun's env
    assert args.distributed, 'run me with torchrun --nproc_per_node=2'
    rank, world_size = args.rank, args.world_size

    torch.manual_seed(rank)  # a different init per rank: DDP must broadcast rank 0's weights
    model = timm.create_model(MODEL, **MODEL_KWARGS)
    optimizer = create_optimizer_v2(model, opt='momentum', lr=0.05, momentum=0.9, weight_decay=5e-4)
    ddp = DistributedDataParallel(model)  # CPU module: no device_ids
    init = copy.deepcopy(model.state_dict())

    # Gradient check with dropout off (eval mode; the net has no batch norm), so it is deterministic.
    images, labels, _ = digits_images(IMG_SIZE)
    x, y = shard(images, labels, rank, world_size, 0, args.per_rank)
    local = copy.deepcopy(model).eval()
    F.cross_entropy(local(x), y).backward()
    local_grads = gradients(local)
    ddp.eval()
    F.cross_entropy(ddp(x), y).backward()
    ddp_grads = gradients(model)
    optimizer.zero_grad()

    ddp.train()
    torch.manual_seed(100 + rank)  # dropout masks differ per rank
    for step in range(1, args.steps + 1):
        xs, ys = shard(images, labels, rank, world_size, step, args.per_rank)
        F.cross_entropy(ddp(xs), ys).backward()
        optimizer.step()
        optimizer.zero_grad()

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({
        'rank': rank, 'world_size': world_size, 'inputs': x, 'targets': y, 'init': init,
        'local_grads': local_grads, 'ddp_grads': ddp_grads, 'final': model.state_dict(),
    }, args.out / f'rank{rank}.pt')
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
