"""Where timm's ``train.py`` comes from: it is not in the timm wheel, so it is found, or fetched once.

Lookup order: an explicit path, ``$TIMM_TRAIN_SCRIPT``, ``./pytorch-image-models/train.py``, the user cache
(``$XDG_CACHE_HOME`` or ``~/.cache``, ``timm-prelu/train-<timm version>.py``). When none exists, the
``train.py`` of the installed timm's release tag is downloaded into the user cache from
``$TIMM_TRAIN_SCRIPT_URL`` (a template with ``{version}``), checked, and written complete or not at all.
"""
import ast
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

from ..errors import TrainScriptError
from ..outputs import write_atomic

__all__ = [
    'TRAIN_SCRIPT_ENV', 'TRAIN_SCRIPT_URL_ENV', 'DEFAULT_TRAIN_SCRIPT_URL', 'find_train_script',
    'cached_train_script', 'download_train_script', 'check_train_script',
]

TRAIN_SCRIPT_ENV = 'TIMM_TRAIN_SCRIPT'
TRAIN_SCRIPT_URL_ENV = 'TIMM_TRAIN_SCRIPT_URL'
DEFAULT_TRAIN_SCRIPT_URL = 'https://raw.githubusercontent.com/huggingface/pytorch-image-models/v{version}/train.py'
MAX_SCRIPT_BYTES = 2 * 1024 * 1024  # timm 1.0's train.py is ~75 kB
DOWNLOAD_TIMEOUT_S = 30

_CHECKOUT = 'git clone https://github.com/huggingface/pytorch-image-models'

PathLike = Union[str, os.PathLike]


def _timm_version() -> str:
    import timm
    return timm.__version__


def _as_script(path: Path) -> Path:
    """A train.py path from a path to the script or to a timm checkout."""
    return path / 'train.py' if path.is_dir() else path


def cached_train_script(version: Optional[str] = None) -> Path:
    """Where the downloaded ``train.py`` of timm ``version`` (default: the installed one) lives in the user cache."""
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base).expanduser() / 'timm-prelu' / f'train-{version or _timm_version()}.py'


def check_train_script(data: bytes, source: str) -> None:
    """Refuse ``data`` unless it is a Python script defining timm's argparse ``parser`` and ``_parse_args``.

    Raises:
        TrainScriptError: too large, not UTF-8 Python, or not timm's train.py.
    """
    if len(data) > MAX_SCRIPT_BYTES:
        raise TrainScriptError(f'{source} is larger than {MAX_SCRIPT_BYTES} bytes: not timm\'s train.py')
    try:
        tree = ast.parse(data.decode('utf-8'), filename=source)
    except (UnicodeDecodeError, SyntaxError, ValueError) as e:
        raise TrainScriptError(f'{source} is not a Python script ({e.__class__.__name__}): not timm\'s train.py') from e
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign) and 'ArgumentParser' in ast.unparse(node.value):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    missing = sorted({'parser', '_parse_args', 'main'} - names)
    if missing:
        raise TrainScriptError(f'{source} does not define {", ".join(missing)}: not timm\'s train.py '
                               f'(an argparse `parser`, `_parse_args` and `main` are expected)')


def download_train_script(version: Optional[str] = None, url: Optional[str] = None,
                          dest: Optional[PathLike] = None) -> Path:
    """Download timm ``version``'s ``train.py`` to ``dest`` (default: the user cache), complete or not at all.

    Args:
        version: timm version whose release tag to fetch; default the installed timm.
        url: URL or template with ``{version}``; default ``$TIMM_TRAIN_SCRIPT_URL`` or the GitHub release tag.
        dest: Where to write; default :func:`cached_train_script`.

    Raises:
        TrainScriptError: the download failed or did not return timm's train.py; names both ways out.
    """
    version = version or _timm_version()
    template = url or os.environ.get(TRAIN_SCRIPT_URL_ENV) or DEFAULT_TRAIN_SCRIPT_URL
    url = template.replace('{version}', version)
    dest = Path(dest) if dest is not None else cached_train_script(version)
    ways_out = (f'set {TRAIN_SCRIPT_ENV} (or pass the script path) to train.py of a pytorch-image-models checkout '
                f'(`{_CHECKOUT}`), or connect to the network so it can be downloaded')
    print(f"timm's train.py: downloading {url} to {dest}", file=sys.stderr, flush=True)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read(MAX_SCRIPT_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise TrainScriptError(f"could not download timm {version}'s train.py from {url} "
                               f"(HTTP {e.code} {e.reason}): {ways_out}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, 'reason', None) or e
        raise TrainScriptError(f"could not download timm {version}'s train.py from {url} ({reason}): "
                               f"{ways_out}") from e
    try:
        check_train_script(data, url)
    except TrainScriptError as e:
        raise TrainScriptError(f'{e}; nothing was saved: {ways_out}') from e
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, data)
    except OSError as e:
        raise TrainScriptError(f"could not save timm's train.py to {dest} ({e}): make {dest.parent} writable "
                               f"(or set XDG_CACHE_HOME), or {ways_out}") from e
    return dest


def find_train_script(path: Optional[PathLike] = None, download: bool = True) -> Path:
    """timm's ``train.py``: ``path`` (script or checkout), else ``$TIMM_TRAIN_SCRIPT``, else
    ``./pytorch-image-models/train.py``, else the user cache; else (``download``) fetch it into the cache.

    Raises:
        TrainScriptError: the script named is missing, or none was found and it cannot be downloaded.
    """
    for source, param, value in (('the script path', 'path', path),
                                 (TRAIN_SCRIPT_ENV, None, os.environ.get(TRAIN_SCRIPT_ENV))):
        if value:
            script = _as_script(Path(value).expanduser())
            if not script.is_file():
                raise TrainScriptError(f"timm's train.py not found at {script} (from {source}): point it at "
                                       f"train.py of a pytorch-image-models checkout (`{_CHECKOUT}`)", param=param)
            return script.resolve()
    for script in (Path.cwd() / 'pytorch-image-models' / 'train.py', cached_train_script()):
        if script.is_file():
            return script.resolve()
    if not download:
        raise TrainScriptError(f"timm's train.py not found (no {TRAIN_SCRIPT_ENV}, no "
                               f"./pytorch-image-models/train.py, nothing at {cached_train_script()}): set "
                               f"{TRAIN_SCRIPT_ENV} to train.py of a checkout (`{_CHECKOUT}`)")
    return download_train_script().resolve()
