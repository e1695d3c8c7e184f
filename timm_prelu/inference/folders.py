"""Bounded walks of ImageFolders (``<root>/<class>/<image>``) that other people made.

A class is a sub-folder of the root; its images are the files with an image extension (timm's: .png, .jpg,
.jpeg) anywhere below it. Classes are indexed in timm's natural sort order of the folder names, as timm's
ImageFolder reader indexes them for train.py, except that a class folder holding no image keeps its index (timm's
reader would drop it and shift every later class; here it is reported instead).

The walk follows symlinks, as timm's does, but never twice into the same real folder: a link back to a folder
being walked is a loop, reported and not followed; a second link to an already walked folder, a hard link or a
second symlink to an already counted file is reported once and not counted again. The number of entries looked at
and the depth are capped, and ``limit`` stops the walk once that many images are found.
"""
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from ..errors import DatasetError
from ..sources.labels import label_names_problem

__all__ = ['ImageFolderListing', 'walk_imagefolder', 'IMAGE_EXTENSIONS', 'DEFAULT_MAX_ENTRIES', 'DEFAULT_MAX_DEPTH']

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')  # timm.data.readers.img_extensions: what train.py reads
DEFAULT_MAX_ENTRIES = 5_000_000  # files and folders looked at; ImageNet's train split has 1.28 M images
DEFAULT_MAX_DEPTH = 32  # folder levels below a class folder


@dataclass
class ImageFolderListing:
    """What a walk found.

    Attributes:
        samples: ``(path, class index)`` of each distinct image file, in walk order (classes in natural order,
            names in natural order inside each folder, depth first).
        class_to_idx: Every class folder (empty ones included) -> its index.
        others: Files that are not images, or lie outside any class folder.
        skipped: ``(path, reason)`` of what was not followed or not counted: symlink loops, folders or files reached
            twice, broken links, unreadable or too deep folders.
        empty_classes: Class folders in which no image was found (only complete when the walk was not limited).
        complete: False when ``limit`` stopped the walk early.
    """
    root: Path
    samples: List[Tuple[str, int]]
    class_to_idx: Dict[str, int]
    others: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    empty_classes: List[str] = field(default_factory=list)
    complete: bool = True

    @property
    def loops(self) -> List[Tuple[str, str]]:
        return [(p, why) for p, why in self.skipped if why.startswith('symlink loop')]


def _natural_key(name: str):
    from timm.utils import natural_key
    return natural_key(name)


def _stat_failure(entry: os.DirEntry, e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return 'symlink loop: the link resolves to itself, not followed'
    return 'broken symlink' if entry.is_symlink() else f'cannot stat ({e.strerror or e})'


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class _Walk:
    def __init__(self, max_entries: int, max_depth: int, limit: Optional[int]) -> None:
        self.max_entries, self.max_depth, self.limit = max_entries, max_depth, limit
        self.entries = 0
        self.dirs_seen: Dict[Tuple[int, int], str] = {}  # real folder -> first path it was walked under
        self.files_seen: Dict[Tuple[int, int], str] = {}
        self.samples: List[Tuple[str, int]] = []
        self.others: List[str] = []
        self.skipped: List[Tuple[str, str]] = []
        self.root = ''
        self.real_root = ''
        self.real_class = ''  # the class folder being walked, links resolved

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.samples) >= self.limit

    def _scandir(self, path: str) -> Optional[List[os.DirEntry]]:
        try:
            with os.scandir(path) as it:
                entries = []
                for entry in it:
                    self.entries += 1
                    if self.entries > self.max_entries:
                        raise DatasetError(
                            f'{self.root}: more than {self.max_entries} files and folders: the walk stops there; '
                            f'evaluate a smaller folder, or raise max_entries', param='data')
                    if not entry.name.startswith('.'):
                        entries.append(entry)
        except OSError as e:
            self.skipped.append((path, f'cannot read the folder ({e.strerror or e})'))
            return None
        return sorted(entries, key=lambda e: _natural_key(e.name))

    def _into_other_class(self, link: str) -> bool:
        real = os.path.realpath(link)
        return _inside(real, self.real_root) and not _inside(real, self.real_class)

    def walk(self, path: str, target: int, depth: int, ancestors: Dict[Tuple[int, int], str]) -> None:
        """Images below one (real, not yet walked) folder; ``ancestors`` are the real folders above it."""
        entries = self._scandir(path)
        if entries is None:
            return
        for entry in entries:
            if self.full:
                return
            child = os.path.join(path, entry.name)
            try:
                st = os.stat(child)  # follows links: the real file or folder
            except OSError as e:
                self.skipped.append((child, _stat_failure(entry, e)))
                continue
            key = (st.st_dev, st.st_ino)
            if entry.is_symlink() and key not in ancestors and self._into_other_class(child):
                self.skipped.append((child, 'link into another class folder, not followed (it would give its '
                                            'images a second class)'))
            elif entry.is_dir():
                if key in ancestors:
                    self.skipped.append((child, f'symlink loop: leads back to {ancestors[key]}, not followed'))
                elif key in self.dirs_seen:
                    self.skipped.append((child, f'same folder as {self.dirs_seen[key]}, not walked twice'))
                elif depth >= self.max_depth:
                    self.skipped.append((child, f'more than {self.max_depth} folder levels deep, not walked'))
                else:
                    self.dirs_seen[key] = child
                    self.walk(child, target, depth + 1, {**ancestors, key: child})
            elif key in self.files_seen:
                self.skipped.append((child, f'same file as {self.files_seen[key]} (a link), counted once'))
            else:
                self.files_seen[key] = child
                if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    self.samples.append((child, target))
                else:
                    self.others.append(child)


def walk_imagefolder(
        root: Union[str, os.PathLike],
        limit: Optional[int] = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_depth: int = DEFAULT_MAX_DEPTH,
) -> ImageFolderListing:
    """List the images of an ImageFolder and their class indices, bounded and loop-safe.

    Args:
        root: The ImageFolder root: one sub-folder per class.
        limit: Stop once this many images are found (None: all).
        max_entries: Most files and folders looked at before the walk is refused.
        max_depth: Most folder levels below a class folder.

    Raises:
        DatasetError: the root is missing or not a folder, has no class folder or no image, or more entries than
            ``max_entries``.
    """
    root_path = Path(root)
    if root_path.exists() and not root_path.is_dir():
        raise DatasetError(f'{root_path} is a file, not a folder: pass an ImageFolder (one sub-folder of images per '
                           f'class)', param='data')
    if not root_path.is_dir():
        raise DatasetError(f'{root_path}: no such folder: pass an ImageFolder (one sub-folder of images per class)',
                           param='data')
    if limit is not None and limit < 1:
        raise DatasetError(f'limit must be a positive number of images, got {limit}', param='limit')
    walk = _Walk(max_entries, max_depth, limit)
    walk.root = str(root_path)
    root_st = os.stat(root_path)
    root_key = (root_st.st_dev, root_st.st_ino)
    walk.dirs_seen[root_key] = str(root_path)
    top = walk._scandir(str(root_path))
    if top is None:
        raise DatasetError(f'{root_path}: cannot read the folder ({walk.skipped[-1][1]}): check its permissions',
                           param='data')
    classes: List[Tuple[str, str, Tuple[int, int]]] = []
    for entry in top:
        child = os.path.join(str(root_path), entry.name)
        try:
            st = os.stat(child)
        except OSError as e:
            walk.skipped.append((child, _stat_failure(entry, e)))
            continue
        if entry.is_dir():
            classes.append((entry.name, child, (st.st_dev, st.st_ino)))
        else:
            walk.others.append(child)  # files beside the class folders belong to no class
    problem = label_names_problem([name for name, _, _ in classes])
    if problem:
        raise DatasetError(f'{root_path}: the class folders cannot name classes: {problem}: rename the folder',
                           param='data')
    class_to_idx = {name: i for i, (name, _, _) in enumerate(classes)}
    walk.real_root = os.path.realpath(root_path)
    first_of: Dict[Tuple[int, int], str] = {}
    for name, child, key in classes:  # registered first: a link from one class into another is never walked
        first_of.setdefault(key, child)
    walk.dirs_seen.update({k: v for k, v in first_of.items() if k != root_key})
    counts: Dict[str, int] = {}
    for name, child, key in classes:
        if walk.full:
            break
        before = len(walk.samples)
        if key == root_key:
            walk.skipped.append((child, f'symlink loop: leads back to {root_path}, not followed'))
        elif first_of[key] != child:
            walk.skipped.append((child, f'same folder as {first_of[key]}, not walked twice'))
        else:
            walk.real_class = os.path.realpath(child)
            walk.walk(child, class_to_idx[name], 1, {root_key: str(root_path), key: child})
        counts[name] = len(walk.samples) - before
    if not classes:
        raise DatasetError(f'{root_path}: no class folders (expected {root_path}/<class>/<image>.jpg|png): pass an '
                           f'ImageFolder', param='data')
    if not walk.samples:
        raise DatasetError(f'{root_path}: no images found (expected {root_path}/<class>/<image>.jpg|png|jpeg): '
                           f'pass an ImageFolder', param='data')
    empty = [name for name, _, _ in classes if counts.get(name) == 0]
    return ImageFolderListing(root_path, walk.samples, class_to_idx, walk.others, walk.skipped, empty,
                              complete=not walk.full)
