"""Outputs that are either absent, finished, or obviously unfinished: folders and single files.

Folder work is written into ``<out>.partial`` and renamed to ``<out>`` only when everything succeeded; a file goes
through a hidden temp file beside it. An interrupted run (Ctrl-C, a crash) never leaves an output a re-run or a
reader would take for finished.
"""
import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Union

from .errors import UserError

__all__ = ['finished_output_dir', 'write_atomic', 'save_figure']


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


def write_atomic(path: Union[str, os.PathLike], data: Union[str, bytes, Callable[[Path], None]]) -> None:
    """Write ``path`` (text, bytes, or ``data(tmp_path)``) through a temp file in its folder: complete or absent."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data, encoding='utf-8')
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig, path: Union[str, os.PathLike], dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (see :func:`write_atomic`), then close it."""
    import matplotlib.pyplot as plt
    path = Path(path)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format='png'))
    finally:
        plt.close(fig)
    return path
