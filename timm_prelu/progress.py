"""Progress for long work: a tqdm bar on a terminal, a few plain lines in a log file or CI.

A bar redraws itself with carriage returns many times a second, which a file or a CI log keeps as one endless
line; the plain reporter writes a line at every 10% of the work (or every 30 s, whichever comes first) and one at
the end.
"""
import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TextIO

__all__ = ['progress', 'LineProgress']

LINE_EVERY_FRACTION = 0.1
LINE_EVERY_S = 30.0


def _is_terminal(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(
        iterable: Optional[Iterable] = None,
        total: Optional[float] = None,
        desc: Optional[str] = None,
        unit: str = 'it',
        disable: bool = False,
        file: Optional[TextIO] = None,
):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a ``LineProgress``; same calls on both.

    Use it as tqdm: iterate it, or ``update(n)`` it inside ``with``; ``set_description_str`` and
    ``set_postfix_str`` name the current step.
    """
    file = sys.stderr if file is None else file
    if disable or _is_terminal(file):
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=file, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, file=file)


class LineProgress:
    """tqdm's counting calls, reported as a plain line every ``every_fraction`` of ``total`` or ``every_s``."""

    def __init__(
            self,
            iterable: Optional[Iterable] = None,
            total: Optional[float] = None,
            desc: Optional[str] = None,
            unit: str = 'it',
            file: Optional[TextIO] = None,
            every_fraction: float = LINE_EVERY_FRACTION,
            every_s: float = LINE_EVERY_S,
            clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, '__len__'):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.file = sys.stderr if file is None else file
        self.every_fraction, self.every_s, self.clock = every_fraction, every_s, clock
        self.n = 0
        self.postfix = ''
        self.start = self.last_time = clock()
        self.last_step = 0  # the last fraction step reported, in units of every_fraction
        self.last_n: Optional[float] = None
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> 'LineProgress':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def set_description_str(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix_str(self, s: str = '', refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ', '.join(f'{k}={v}' for k, v in items.items())

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        step = int(self.n / self.total / self.every_fraction + 1e-9) if self.total else 0
        if step > self.last_step or now - self.last_time >= self.every_s:
            self._line(now)
            self.last_step = step

    def _line(self, now: float) -> None:
        done = f'{100 * self.n / self.total:.0f}% {self.n:g}/{self.total:g}' if self.total else f'{self.n:g}'
        post = f', {self.postfix}' if self.postfix else ''
        head = f'{self.desc}: ' if self.desc else ''
        self.file.write(f'{head}{done} {self.unit}, {now - self.start:.0f} s{post}\n')
        self.file.flush()
        self.last_time, self.last_n = now, self.n

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n and self.n != self.last_n:
            self._line(self.clock())
