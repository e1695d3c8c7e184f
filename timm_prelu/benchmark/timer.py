"""Wall-clock timing for comparisons: warm-up, interleaved repeats, median and spread.

Alternatives are timed in rounds (each round runs every alternative once, the order rotated from round to round),
so a slow minute on a shared machine hits all of them alike and their ratio stays meaningful.
"""
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

__all__ = ['Stats', 'interleaved', 'repeats_for_budget', 'sync_for']


@dataclass
class Stats:
    """Repeated timings of one thing, in seconds."""

    samples: List[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def q1(self) -> float:
        return _quartiles(self.samples)[0]

    @property
    def q3(self) -> float:
        return _quartiles(self.samples)[1]

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def iqr_pct(self) -> float:
        """Inter-quartile range as a percentage of the median: the spread to read a ratio against."""
        return 100.0 * (self.q3 - self.q1) / self.median

    def summary(self) -> Dict[str, float]:
        return dict(n=self.n, median_s=self.median, q1_s=self.q1, q3_s=self.q3, min_s=self.min, max_s=self.max)


def _quartiles(samples: List[float]) -> tuple:
    if len(samples) < 2:
        return samples[0], samples[0]
    q = statistics.quantiles(samples, n=4, method='inclusive')
    return q[0], q[2]


def sync_for(device: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (CUDA kernels run asynchronously)."""
    if str(device).startswith('cuda'):
        import torch
        return torch.cuda.synchronize
    return lambda: None


def repeats_for_budget(seconds_per_round: float, budget_s: float, min_repeats: int, max_repeats: int) -> int:
    """How many rounds fit in ``budget_s``, clamped to [min_repeats, max_repeats]."""
    fit = int(budget_s / max(seconds_per_round, 1e-9))
    return max(min_repeats, min(max_repeats, fit))


def interleaved(
        fns: Mapping[str, Callable[[], Any]],
        repeats: int = 5,
        warmup: int = 1,
        budget_s: Optional[float] = None,
        max_repeats: Optional[int] = None,
        sync: Callable[[], None] = lambda: None,
        pause_s: float = 0.0,
) -> Dict[str, Stats]:
    """Time every function in ``fns`` in interleaved rounds after ``warmup`` untimed rounds.

    Args:
        fns: Name -> zero-argument callable doing one unit of work (e.g. one forward pass of a batch).
        repeats: Timed rounds; with ``budget_s`` it is the minimum.
        warmup: Untimed rounds first (allocator, oneDNN primitive caches, lazy initialisation).
        budget_s: If given, as many rounds as fit in this many seconds (judged by the last warm-up round, or
            by the first timed round without warm-up), at least ``repeats`` and at most ``max_repeats``.
        max_repeats: Upper bound with ``budget_s`` (default ``4 * repeats``).
        sync: Called before each clock read (``torch.cuda.synchronize`` on a GPU).
        pause_s: Sleep before each timed call (untimed), e.g. to let another runtime's spinning threads idle.
    """
    names = list(fns)
    last_round = None
    for _ in range(warmup):
        start = time.perf_counter()
        for name in names:
            fns[name]()
        sync()
        last_round = time.perf_counter() - start
    cap = max_repeats or 4 * repeats
    if budget_s is not None and last_round is not None:
        repeats = repeats_for_budget(last_round, budget_s, repeats, cap)
    stats = {name: Stats() for name in names}
    r = 0
    while r < repeats:
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            sync()
            if pause_s:
                time.sleep(pause_s)
            start = time.perf_counter()
            fns[name]()
            sync()
            stats[name].samples.append(time.perf_counter() - start)
        if r == 0 and budget_s is not None and last_round is None:  # no warm-up: size by the first round
            repeats = repeats_for_budget(sum(s.samples[0] for s in stats.values()), budget_s, repeats, cap)
        r += 1
    return stats
