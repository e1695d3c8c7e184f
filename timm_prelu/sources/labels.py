"""Class names, in class-index order, from a text file or an ImageFolder: the one reader every command uses.

A FILE holds one name per line (UTF-8, the line number is the class index, as timm's ``--class-map``); a FOLDER is
an ImageFolder whose class sub-folders, in timm's natural order, are the classes (as train.py indexes them). Both
are bounded: a label file is small, a class listing stops at a cap, names are non-empty single lines.
"""
import os
from collections import Counter
from pathlib import Path
from typing import List, Union

from ..errors import ConfigError, DatasetError

__all__ = ['read_label_names', 'MAX_LABEL_FILE_BYTES', 'MAX_LABELS']

MAX_LABEL_FILE_BYTES = 4 * 1024 * 1024  # ImageNet-21k's 21843 synset names take under 0.3 MB
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 1000


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
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ConfigError(f'label names in {path} repeat {", ".join(map(repr, duplicates[:5]))}: each class needs '
                          f'its own name', param='labels')
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
    lines = text.splitlines()
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
