"""An output folder that is either absent, finished, or obviously unfinished.

Work is written into ``<out>.partial`` and renamed to ``<out>`` only when everything succeeded, so an interrupted
run (Ctrl-C, a crash) never leaves a folder a re-run or a reader would take for finished.
"""
import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator, Union

from .errors import UserError

__all__ = ['finished_output_dir']


@contextlib.contextmanager
def finished_output_dir(out: Union[str, os.PathLike], overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh work folder that becomes ``out`` on success; refuse an existing ``out`` unless ``overwrite``."""
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise UserError(f'{out} already exists: choose another --out, or pass --overwrite to replace it')
    if out.exists() and not out.is_dir():
        raise UserError(f'{out} exists and is not a folder: choose another --out')
    partial = out.with_name(out.name + '.partial')
    if partial.exists():  # left by an interrupted run: never finished, safe to discard
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
