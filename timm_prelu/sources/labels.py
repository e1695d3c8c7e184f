"""Class names, in class-index order, from a text file or an ImageFolder: the one reader every command uses.

A FILE holds one name per line (UTF-8, the line number is the class index, as timm's ``--class-map``); a FOLDER is
an ImageFolder whose class sub-folders, in timm's natural order, are the classes (as train.py indexes them). Both
are bounded: a label file is small, a class listing stops at a cap, names are non-empty single lines.
"""
import os
import unicodedata
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence, Union

from ..errors import ConfigError, DatasetError
from ..formatting import HIDDEN_CATEGORIES

__all__ = ['read_label_names', 'label_names_problem', 'MAX_LABEL_FILE_BYTES', 'MAX_LABELS']

MAX_LABEL_FILE_BYTES = 4 * 1024 * 1024  # ImageNet-21k's 21843 synset names take under 0.3 MB
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 1000


def label_names_problem(names: Sequence[str], unique: bool = True) -> Optional[str]:
    """Why ``names`` cannot be class names, in a few words (None when they can).

    The same check for every source (label files, ImageFolder class folders, ``config.json``, ONNX metadata): each
    name is a non-empty string of at most ``MAX_LABEL_CHARS`` characters with no character a terminal would not
    show as itself, and (``unique``) no name repeats, since repeated names would shift or merge classes.
    """
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            return f'class {i} has an empty name'
        if len(name) > MAX_LABEL_CHARS:
            return f'class {i} has a name of {len(name)} characters (at most {MAX_LABEL_CHARS})'
        hidden = next((c for c in name if unicodedata.category(c) in HIDDEN_CATEGORIES), None)
        if hidden is not None:
            # escaped in full, newlines too (printable() keeps them): the message stays one line
            return (f'class {i} ({name.encode("unicode_escape").decode("ascii")[:60]}) holds the invisible '
                    f'character U+{ord(hidden):04X} ({unicodedata.name(hidden, unicodedata.category(hidden))})')
    if unique:
        repeated = sorted(n for n, count in Counter(names).items() if count > 1)
        if repeated:
            return f'they repeat {", ".join(map(ascii, repeated[:5]))} (each class needs its own name)'
    return None


def read_label_names(source: Union[str, os.PathLike]) -> List[str]:
    """Class names from a text file (one per line) or an ImageFolder (its class sub-folders, naturally sorted).

    Raises:
        ConfigError: the path is missing, or the file is too large, not UTF-8, has an empty or duplicate name.
        DatasetError: the folder has no class sub-folders, or more than ``MAX_LABELS``.
    """
    path = Path(source)
    if path.is_dir():
        names = _folder_names(path)
    elif path.is_file():
        names = _file_names(path)
    else:
        raise ConfigError(f'label names: {path} is neither a file nor a folder: pass a text file with one class '
                          f'name per line, or the ImageFolder whose class folders name the classes', param='labels')
    problem = label_names_problem(names)
    if problem:
        raise ConfigError(f'label names in {path}: {problem}: fix the names (one visible, distinct name per class)',
                          param='labels')
    return names


def _file_names(path: Path) -> List[str]:
    size = path.stat().st_size
    if size > MAX_LABEL_FILE_BYTES:
        raise ConfigError(f'label file {path} is {size / 2**20:.1f} MB, more than a label file holds '
                          f'(limit {MAX_LABEL_FILE_BYTES // 2**20} MB): pass a text file with one class name per '
                          f'line', param='labels')
    try:
        with path.open('rb') as f:
            text = f.read(MAX_LABEL_FILE_BYTES + 1).decode('utf-8')
    except UnicodeDecodeError as e:
        raise ConfigError(f'label file {path} is not UTF-8 text (byte {e.start}): pass a text file with one class '
                          f'name per line', param='labels') from e
    except OSError as e:
        raise ConfigError(f'cannot read label file {path}: {e.strerror or e}', param='labels') from e
    # only \n ends a line: str.splitlines() would also split at U+2028, \x1c ..., shifting every later class
    lines = [line[:-1] if line.endswith('\r') else line for line in text.split('\n')]
    while lines and not lines[-1].strip():  # a trailing newline or blank tail is not a class
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        raise ConfigError(f'label file {path} is empty: pass one class name per line, in class-index order',
                          param='labels')
    if len(names) > MAX_LABELS:
        raise ConfigError(f'label file {path} has {len(names)} lines, more than {MAX_LABELS} classes',
                          param='labels')
    for i, name in enumerate(names, start=1):
        if not name:
            raise ConfigError(f'label file {path}: line {i} is empty: every line names one class (its line number '
                              f'is the class index); remove the blank line', param='labels')
        if len(name) > MAX_LABEL_CHARS or '\x00' in name:
            raise ConfigError(f'label file {path}: line {i} is not a class name (over {MAX_LABEL_CHARS} characters '
                              f'or binary): pass a text file with one class name per line', param='labels')
    return names


def _folder_names(path: Path) -> List[str]:
    from timm.utils import natural_key
    names: List[str] = []
    try:
        with os.scandir(path) as entries:
            for seen, entry in enumerate(entries, start=1):
                if seen > 4 * MAX_LABELS:
                    raise DatasetError(f'{path} holds more than {4 * MAX_LABELS} entries: pass the ImageFolder '
                                       f'root whose sub-folders are the classes', param='labels')
                if not entry.name.startswith('.') and entry.is_dir():
                    names.append(entry.name)
    except OSError as e:
        raise DatasetError(f'cannot list {path}: {e.strerror or e}', param='labels') from e
    if not names:
        raise DatasetError(f'{path} has no class folders: pass an ImageFolder (one sub-folder per class) or a '
                           f'text file with one class name per line', param='labels')
    if len(names) > MAX_LABELS:
        raise DatasetError(f'{path} has {len(names)} class folders, more than {MAX_LABELS}', param='labels')
    return sorted(names, key=natural_key)
