"""Evaluation across processes and machines: the process group ``torchrun`` describes, shards, collective errors.

Under ``torchrun`` (its environment variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
:func:`process_group` joins ``torch.distributed`` (gloo on CPU, nccl on GPU); without them it gives the single
process view, so a plain run needs nothing. Every step that can fail on one rank runs through
:meth:`Ranks.gather`: each rank sends its result or its error, so a failure on any rank stops every rank with an
error instead of leaving the others waiting.
"""
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

from ..errors import ConfigError, RankFailedError, TimmPreluError

__all__ = ['Ranks', 'RankFailedError', 'process_group', 'torchrun_env', 'cpu_threads_per_process',
           'merge_by_index']

TORCHRUN_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: rank, world size, and the local rank (its GPU on the node).

    ``backend`` is None for a single process without a process group; collectives are then local.
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def shard(self, n: int) -> range:
        """This rank's indices of ``n`` items: every ``world_size``-th from ``rank`` (disjoint, sizes differ by
        at most one, the same on every machine for the same sorted listing)."""
        return range(self.rank, n, self.world_size)

    def shard_sizes(self, n: int) -> List[int]:
        return [len(range(r, n, self.world_size)) for r in range(self.world_size)]

    def gather(self, fn: Callable[[], Any], what: str, share: bool = True) -> List[Any]:
        """Run ``fn`` here and return every rank's result (in rank order), or raise on every rank if it failed
        on any: the failing rank re-raises its own error, the others a :class:`RankFailedError` (the same
        :class:`TimmPreluError` subclass and ``param`` when it was one) naming the rank and ``what`` it was doing.
        ``share=False`` sends only whether ``fn`` failed: the list holds this rank's result and None elsewhere.
        """
        error: Optional[BaseException] = None
        result = None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001  (every failure must reach the other ranks before it is raised)
            error = e
        if not self.distributed:
            if error is not None:
                raise error
            return [result]
        import torch.distributed as dist
        sent = (_describe(error), result if error is None and share else None)
        received: List[Any] = [None] * self.world_size
        dist.all_gather_object(received, sent)
        if error is not None:
            raise error
        for rank, (failure, _) in enumerate(received):
            if failure is not None:
                raise _remote_error(rank, what, *failure)
        results = [r for _, r in received]
        if not share:
            results[self.rank] = result
        return results

    def barrier(self) -> None:
        """Wait for every rank (through the object collective, which works on gloo and nccl alike)."""
        self.gather(lambda: None, 'waiting for the other ranks')


def _describe(error: Optional[BaseException]) -> Optional[Tuple[Optional[type], str, Optional[str]]]:
    if error is None:
        return None
    cls = type(error) if isinstance(error, TimmPreluError) else None
    return cls, f'{type(error).__name__}: {error}' if cls is None else str(error), getattr(error, 'param', None)


def _remote_error(rank: int, what: str, cls: Optional[type], message: str, param: Optional[str]) -> TimmPreluError:
    text = f'rank {rank} failed while {what}: {message}'
    if cls is not None:
        try:
            return cls(text, param=param)
        except TypeError:  # a subclass with its own constructor
            pass
    return RankFailedError(text + ' (see that rank\'s output)', param=param)


def torchrun_env(environ: Optional[dict] = None) -> Optional[dict]:
    """The rank, world size and local rank ``torchrun`` set, or None when they are not all set."""
    env = os.environ if environ is None else environ
    if 'RANK' not in env or 'WORLD_SIZE' not in env:
        return None
    values = {}
    for name, default in (('RANK', None), ('WORLD_SIZE', None), ('LOCAL_RANK', '0'), ('LOCAL_WORLD_SIZE', None)):
        raw = env.get(name, default)
        if raw is None:
            continue
        try:
            values[name] = int(raw)
        except ValueError as e:
            raise ConfigError(f'environment variable {name}={raw!r} is not an integer: start the run with '
                              f'torchrun, which sets it', param='environment') from e
    if not 0 <= values['RANK'] < values['WORLD_SIZE']:
        raise ConfigError(f'RANK={values["RANK"]} is outside WORLD_SIZE={values["WORLD_SIZE"]}: start the run with '
                          f'torchrun, which sets both', param='environment')
    values.setdefault('LOCAL_WORLD_SIZE', values['WORLD_SIZE'])
    return values


def cpu_threads_per_process(local_world_size: int) -> int:
    """The CPU cores this process may use, shared evenly by the processes on this machine (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


@contextmanager
def process_group(cuda: bool = False) -> Iterator[Ranks]:
    """Join the process group ``torchrun`` describes (gloo, or nccl with ``cuda``), yield this rank's
    :class:`Ranks`, and leave the group at the end. Without torchrun's variables: one process, no group.

    With ``cuda`` each process uses ``cuda:LOCAL_RANK``. A group the caller already started is used as it is
    and left open.
    """
    env = torchrun_env()
    if env is None:
        yield Ranks()
        return
    import torch
    import torch.distributed as dist
    ranks = Ranks(env['RANK'], env['WORLD_SIZE'], env['LOCAL_RANK'], env['LOCAL_WORLD_SIZE'],
                  'nccl' if cuda else 'gloo')
    if dist.is_initialized():
        yield Ranks(dist.get_rank(), dist.get_world_size(), ranks.local_rank, ranks.local_world_size,
                    dist.get_backend())
        return
    if cuda:
        if ranks.local_rank >= torch.cuda.device_count():
            raise ConfigError(f'local rank {ranks.local_rank} has no GPU: this machine has '
                              f'{torch.cuda.device_count()}; start at most that many processes per node',
                              param='environment')
        torch.cuda.set_device(ranks.local_rank)
    missing = [v for v in ('MASTER_ADDR', 'MASTER_PORT') if v not in os.environ]
    if missing:
        raise ConfigError(f'{" and ".join(missing)} not set: start the run with torchrun, which sets them',
                          param='environment')
    dist.init_process_group(ranks.backend)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def merge_by_index(parts: Sequence[Sequence[Tuple[int, Any]]]) -> List[Any]:
    """Every rank's ``(index, item)`` pairs as one list in index order: the order one process would have made."""
    return [item for _, item in sorted((pair for part in parts for pair in part), key=lambda p: p[0])]
