"""Wall-clock time of named pipeline stages, for the demo's report."""
import contextlib
import time
from typing import Dict, Iterator

__all__ = ['StageTimer']


class StageTimer:
    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        print(f'\n== {name}', flush=True)
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start
            print(f'== {name}: {self.seconds[name]:.1f} s', flush=True)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())
