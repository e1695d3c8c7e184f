"""Outputs that are either absent or finished, and that never replace what timm-prelu did not write.

Every writing command goes through this module:

- :func:`check_destination` validates an output path before any work (exists? ours? a file where a folder goes?
  writable?) in milliseconds, so a long job never fails at its end on a bad destination.
- :func:`finished_output_dir` yields a fresh work folder beside ``out`` (``<out>.partial-XXXXXX``) that is renamed to
  ``out`` only when everything succeeded; :func:`finished_output_file` / :func:`finished_output_files` do the same
  for single files through hidden temp files. An interrupted run leaves nothing a reader would take for finished.

What marks an output as ours, so that ``overwrite`` may replace it:

- a folder holds ``.timm-prelu-output.json``, which lists every file and folder written into it; a folder that has
  gained anything else since is not replaced;
- an ONNX file carries the exporter's ``timm_prelu`` metadata key (read from the file's top-level fields without
  parsing the graph or its weights);
- a PNG carries a ``timm-prelu-output`` text chunk (:func:`save_figure` writes it).

Anything else (a CSV, a text file, a foreign ONNX or PNG) is never replaced. Nor, whatever the marker says, are the
working directory, the home folder, the filesystem root, any folder above them, or a folder holding an input.
"""
import contextlib
import datetime
import json
import os
import shutil
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

from .errors import ConfigError, OutputError

__all__ = [
    'MARKER_NAME', 'check_destination', 'finished_output_dir', 'finished_output_file', 'finished_output_files',
    'is_timm_prelu_output', 'final_path', 'final_data', 'write_atomic', 'save_figure',
]

PathLike = Union[str, os.PathLike]
MARKER_NAME = '.timm-prelu-output.json'
PNG_MARKER_KEY = 'timm-prelu-output'
ONNX_MARKER_KEY = 'timm_prelu'  # timm_prelu.onnx_model.runtime.METADATA_KEY (a test keeps them equal)
OVERWRITE_HINT = 'pass overwrite=True'  # the command line words this as its --overwrite flag
_MARKER_MAX_BYTES = 16 * 2 ** 20
_MAX_MANIFEST = 200_000  # entries walked when comparing a folder with its marker
_TOOL = 'timm-prelu'

# work folder -> the output it becomes; lets code inside a run write final paths (see final_path)
_ACTIVE: Dict[Path, Path] = {}


# --- markers ------------------------------------------------------------------------------------------------------

def _read_marker(folder: Path) -> Optional[dict]:
    marker = folder / MARKER_NAME
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > _MARKER_MAX_BYTES:
            return None
        data = json.loads(marker.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get('tool') == _TOOL else None


def _walk(folder: Path, limit: int = _MAX_MANIFEST) -> List[str]:
    """Relative paths of everything under ``folder`` (folders with a trailing '/'), symlinks not followed."""
    found: List[str] = []
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        for name in dirs:
            found.append((name if rel == '.' else f'{rel}/{name}').replace(os.sep, '/') + '/')
        for name in files:
            if rel == '.' and name == MARKER_NAME:
                continue
            found.append((name if rel == '.' else f'{rel}/{name}').replace(os.sep, '/'))
        if len(found) > limit:
            break
    return sorted(found)


def _write_marker(folder: Path, state: str, kind: str) -> None:
    from . import __version__
    info = {'tool': _TOOL, 'version': __version__, 'kind': kind, 'state': state,
            'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
    if state == 'partial':
        info.update(pid=os.getpid(), host=socket.gethostname())
    else:
        info['files'] = _walk(folder)
    (folder / MARKER_NAME).write_text(json.dumps(info, indent=1) + '\n', encoding='utf-8')


def _png_marked(path: Path) -> bool:
    """Whether a PNG has our text chunk (chunks are walked by their lengths; image data is skipped, not read)."""
    try:
        with open(path, 'rb') as f:
            if f.read(8) != b'\x89PNG\r\n\x1a\n':
                return False
            for _ in range(10_000):
                head = f.read(8)
                if len(head) < 8:
                    return False
                length, ctype = struct.unpack('>I4s', head)
                if ctype in (b'tEXt', b'iTXt') and length <= 65536:
                    key = f.read(length).split(b'\0', 1)[0]
                    if key == PNG_MARKER_KEY.encode():
                        return True
                    f.seek(4, os.SEEK_CUR)
                elif ctype == b'IEND':
                    return False
                else:
                    f.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return False
    return False


def _varint(f) -> Optional[int]:
    shift = result = 0
    while shift < 64:
        b = f.read(1)
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
    return None


def _onnx_marked(path: Path) -> bool:
    """Whether an ONNX file's ``metadata_props`` (ModelProto field 14) hold the exporter's key.

    Walks the protobuf's top-level fields by their lengths: the graph (with its weights) is skipped, not read."""
    try:
        size = path.stat().st_size
        with open(path, 'rb') as f:
            for _ in range(10_000):
                tag = _varint(f)
                if tag is None:
                    return False
                field, wire = tag >> 3, tag & 7
                if wire == 0:
                    if _varint(f) is None:
                        return False
                elif wire == 1:
                    f.seek(8, os.SEEK_CUR)
                elif wire == 5:
                    f.seek(4, os.SEEK_CUR)
                elif wire == 2:
                    length = _varint(f)
                    if length is None or f.tell() + length > size:
                        return False
                    if field == 14 and length <= _MARKER_MAX_BYTES:
                        if _entry_key(f.read(length)) == ONNX_MARKER_KEY:
                            return True
                    else:
                        f.seek(length, os.SEEK_CUR)
                else:
                    return False
    except OSError:
        return False
    return False


def _entry_key(entry: bytes) -> Optional[str]:
    """The ``key`` (field 1) of a serialized StringStringEntryProto."""
    import io
    f = io.BytesIO(entry)
    while True:
        tag = _varint(f)
        if tag is None or tag & 7 != 2:
            return None
        length = _varint(f)
        if length is None:
            return None
        value = f.read(length)
        if tag >> 3 == 1:
            return value.decode('utf-8', 'replace')


def is_timm_prelu_output(path: PathLike) -> bool:
    """Whether ``path`` is an output timm-prelu finished (a marked folder, ONNX export or PNG figure)."""
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_dir():
        marker = _read_marker(path)
        return bool(marker) and marker.get('state') == 'finished'
    if path.suffix.lower() == '.onnx':
        return _onnx_marked(path)
    return _png_marked(path)  # checks the PNG signature first


# --- checking a destination ---------------------------------------------------------------------------------------

def _protected(real: Path, inputs: Sequence[PathLike]) -> Optional[str]:
    """Why ``real`` may never be an output (replaced or written as a whole), or None."""
    if real.parent == real:
        return 'is the filesystem root'
    cwd = Path.cwd().resolve()
    if real == cwd:
        return 'is the working directory'
    if real in cwd.parents:
        return 'holds the working directory'
    home = Path(os.path.expanduser('~')).resolve()
    if real == home or real in home.parents:
        return 'is the home folder' if real == home else 'holds the home folder'
    for item in inputs:
        if item is None or str(item) == '':
            continue
        src = Path(os.path.realpath(os.fspath(item)))
        if real == src:
            return f'is an input of this run ({item})'
        if real in src.parents:
            return f'holds an input of this run ({item})'
    return None


def _probe_writable(folder: Path) -> Optional[str]:
    """Try to create (and remove) a file in ``folder``: permissions, read-only mounts and odd filesystems all show."""
    try:
        fd, probe = tempfile.mkstemp(prefix='.timm-prelu-probe-', dir=folder)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(probe)
    return None


def _existing_problem(p: Path, kind: str, overwrite: bool) -> Optional[str]:
    """Why the existing ``p`` may not be replaced, or None when it may."""
    if p.is_symlink():
        return 'is a symbolic link: choose a path that does not exist yet'
    if kind == 'dir' and not p.is_dir():
        return 'is a file, where a folder goes: choose a folder path that does not exist yet'
    if kind == 'file' and p.is_dir():
        return 'is a folder, where a file goes: choose a file path that does not exist yet'
    if not overwrite:
        return f'already exists: choose another path, or {OVERWRITE_HINT} to replace an earlier output of timm-prelu'
    if kind == 'file':
        if not is_timm_prelu_output(p):
            return ('exists and was not written by timm-prelu (it carries no timm-prelu marker), so it is never '
                    'replaced: choose another path')
        return None
    marker = _read_marker(p)
    if marker is None or marker.get('state') != 'finished' or not isinstance(marker.get('files'), list):
        return (f'exists and is not an output of timm-prelu (no {MARKER_NAME} in it), so it is never replaced: '
                f'choose another path')
    extra = sorted(set(_walk(p)) - {str(f) for f in marker['files']})
    if extra:
        shown = ', '.join(extra[:3]) + (f' and {len(extra) - 3} more' if len(extra) > 3 else '')
        return (f'holds files timm-prelu did not write ({shown}), so it is never replaced: move them out or choose '
                f'another path')
    return None


def check_destination(path: PathLike, *, kind: str = 'dir', overwrite: bool = False,
                      inputs: Iterable[Optional[PathLike]] = (), param: str = 'out') -> Path:
    """Check that ``path`` can become an output, before any work; returns it as an absolute path.

    Args:
        path: The folder (``kind='dir'``) or file (``kind='file'``) to write.
        overwrite: Allow replacing an existing output that timm-prelu wrote (marked); nothing else is replaced.
        inputs: Files and folders the run reads; the output may not be one of them or hold one.
        param: The argument name to report in the error.

    Raises:
        OutputError: Naming what is wrong with ``path`` and what to do.
    """
    if kind not in ('dir', 'file'):
        raise ConfigError(f"kind must be 'dir' or 'file', got {kind!r}", param='kind')
    if path is None or os.fspath(path) == '':
        raise OutputError('no output path given: name a file or folder to write', param=param)
    p = Path(os.path.abspath(os.fspath(path)))
    why = _protected(Path(os.path.realpath(p)), list(inputs))
    if why:
        raise OutputError(f'{p} {why}, so it is never written or replaced: choose a new path for the output',
                          param=param)
    if os.path.lexists(p):
        why = _existing_problem(p, kind, overwrite)
        if why:
            raise OutputError(f'{p} {why}', param=param)
    ancestor = p.parent
    while not ancestor.exists() and ancestor.parent != ancestor:
        if os.path.lexists(ancestor):  # a dangling symlink
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f'{p} cannot be created: {ancestor} is not a folder: choose a path in a folder', param=param)
    err = _probe_writable(ancestor)
    if err:
        raise OutputError(f'{p} cannot be written: {ancestor} does not accept new files ({err}): choose a writable '
                          f'location', param=param)
    return p


# --- writing ------------------------------------------------------------------------------------------------------

def _discard_stale_partials(out: Path) -> None:
    """Remove work folders of interrupted runs of ours for ``out`` (marked, and their process is gone)."""
    host = socket.gethostname()
    prefix = f'{out.name}.partial-'
    for candidate in (c for c in out.parent.iterdir() if c.name.startswith(prefix)):
        marker = _read_marker(candidate) if candidate.is_dir() and not candidate.is_symlink() else None
        if not marker or marker.get('state') != 'partial' or marker.get('host') != host:
            continue
        pid = marker.get('pid')
        if isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(candidate, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _set_default_mode(path: Path, mode: int) -> None:
    os.chmod(path, mode & ~_umask())


def _usual_permissions(folder: Path) -> None:
    """Give what was written through private temp files (mkstemp: 0600) the permissions the umask allows."""
    umask = _umask()
    for root, dirs, files in os.walk(folder):
        for name, mode in [(d, 0o777) for d in dirs] + [(f, 0o666) for f in files]:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not os.path.islink(path) and (st.st_mode | (mode & ~umask)) != st.st_mode:
                os.chmod(path, (st.st_mode & 0o7777) | (mode & ~umask))


@contextlib.contextmanager
def finished_output_dir(out: PathLike, overwrite: bool = False, *, inputs: Iterable[Optional[PathLike]] = (),
                        kind: str = 'output', param: str = 'out') -> Iterator[Path]:
    """Yield a fresh work folder that becomes ``out`` once the block succeeds; on any error nothing is left.

    ``out`` is checked first (:func:`check_destination`); with ``overwrite`` an earlier timm-prelu output there is
    replaced at the end, never anything else. ``kind`` is recorded in the folder's marker (e.g. ``'eval'``).
    """
    inputs = list(inputs)
    out = check_destination(out, kind='dir', overwrite=overwrite, inputs=inputs, param=param)
    out.parent.mkdir(parents=True, exist_ok=True)
    _discard_stale_partials(out)
    work = Path(tempfile.mkdtemp(prefix=f'{out.name}.partial-', dir=out.parent))
    _set_default_mode(work, 0o777)  # mkdtemp makes it private; outputs get the usual permissions
    try:
        _write_marker(work, 'partial', kind)
        _ACTIVE[work] = out
        try:
            yield work
        finally:
            _ACTIVE.pop(work, None)
        _usual_permissions(work)
        _write_marker(work, 'finished', kind)
        if os.path.lexists(out):  # check again: the destination may have changed while we worked
            why = _existing_problem(out, 'dir', overwrite)
            if why:
                raise OutputError(f'{out} {why}', param=param)
            old = Path(tempfile.mkdtemp(prefix=f'{out.name}.old-', dir=out.parent))
            os.replace(out, old / 'old')
            os.replace(work, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


@contextlib.contextmanager
def finished_output_files(paths: Sequence[PathLike], overwrite: bool = False, *,
                          inputs: Iterable[Optional[PathLike]] = (), param: str = 'out') -> Iterator[List[Path]]:
    """Yield a hidden temp path beside each of ``paths``; all become their targets once the block succeeds.

    The targets are checked first (:func:`check_destination`, ``kind='file'``); missing parent folders are created.
    With ``overwrite`` only files timm-prelu wrote (see :func:`is_timm_prelu_output`) are replaced.
    """
    inputs = list(inputs)
    finals = [check_destination(p, kind='file', overwrite=overwrite, inputs=inputs, param=param) for p in paths]
    temps: List[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f'.{final.name}.', suffix='.tmp', dir=final.parent)
            os.close(fd)
            temps.append(Path(tmp))
        yield list(temps)
        for final in finals:  # check again before replacing anything
            if os.path.lexists(final):
                why = _existing_problem(final, 'file', overwrite)
                if why:
                    raise OutputError(f'{final} {why}', param=param)
        for tmp, final in zip(temps, finals):
            _set_default_mode(tmp, 0o666)
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def finished_output_file(path: PathLike, overwrite: bool = False, *, inputs: Iterable[Optional[PathLike]] = (),
                         param: str = 'out') -> Iterator[Path]:
    """One-file :func:`finished_output_files`: yields the temp path to write; it becomes ``path`` on success."""
    with finished_output_files([path], overwrite, inputs=inputs, param=param) as (tmp,):
        yield tmp


def _active_pairs() -> List[tuple]:
    """(work, out) of the outputs being written, innermost first."""
    return sorted(_ACTIVE.items(), key=lambda kv: len(kv[0].parts), reverse=True)


def final_path(path: PathLike) -> Path:
    """Where ``path`` will be once the outputs being written around it are finished.

    A path inside a :func:`finished_output_dir` work folder (also nested ones) maps to its place in the finished
    output; anything else is returned absolute. Use it for every path written into an output.
    """
    p = Path(os.path.abspath(os.fspath(path)))
    for _ in range(len(_ACTIVE) + 1):
        for work, out in _active_pairs():
            if p == work or work in p.parents:
                p = out / p.relative_to(work)
                break
        else:
            break
    return p


def final_data(value: Any) -> Any:
    """``value`` (text, or JSON-like lists / dicts of it) with every mention of a work folder being written
    replaced by its finished output's path (work folder names are unique, so plain text replacement is exact)."""
    if isinstance(value, str):
        for _ in range(len(_ACTIVE) + 1):
            before = value
            for work, out in _active_pairs():
                value = value.replace(str(work), str(out))
            if value == before:
                break
        return value
    if isinstance(value, dict):
        return {k: final_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(final_data(v) for v in value)
    return value


def write_atomic(path: PathLike, data: Union[str, bytes, Callable[[Path], None]]) -> None:
    """Write ``path`` (text, bytes, or ``data(tmp_path)``) through a temp file in its folder: complete or absent.

    For files inside a folder the caller owns (e.g. a :func:`finished_output_dir` work folder); a file the user
    names goes through :func:`finished_output_file`, which checks what it would replace.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data, encoding='utf-8')
        else:
            tmp.write_bytes(data)
        _set_default_mode(tmp, 0o666)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig, path: PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as a marked PNG, complete or absent, then close it.

    An existing file at ``path`` is replaced only if it is a PNG timm-prelu wrote; commands refuse even that
    without their overwrite option (checked before their work starts).
    """
    import matplotlib.pyplot as plt
    path = Path(path)
    try:
        with finished_output_file(path, overwrite=True) as tmp:
            fig.savefig(tmp, dpi=dpi, format='png', metadata={PNG_MARKER_KEY: _TOOL})
    finally:
        plt.close(fig)
    return path
