"""Small real image datasets for tests, the demo and the init experiments, built from data a package ships.

scikit-learn bundles 1,797 real 8x8 scans of handwritten digits (UCI optdigits); they are upsampled to RGB
images so the PReLU-nets (minimum input 15 px) and timm's ImageFolder pipeline can use them unchanged.
scikit-image and scikit-learn also ship 20 real photos; :func:`photo_patches` turns them into a harder task, which
photo a patch comes from, with train and test patches from disjoint parts of each photo.
"""
import os
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
from PIL import Image

__all__ = ['digits_images', 'write_imagefolder', 'make_digits_imagefolder', 'photo_images', 'photo_regions',
           'photo_patches']


def digits_images(size: int = 32) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """scikit-learn's digits as uint8 RGB images (N, size, size, 3), their labels and the class names."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits dataset needs scikit-learn: pip install 'timm-prelu[demo]'") from e
    digits = load_digits()
    gray = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # values 0..16 in the dataset
    images = np.stack([
        np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR).convert('RGB')) for g in gray])
    return images, digits.target.astype(np.int64), [str(c) for c in digits.target_names]


def write_imagefolder(
        root: Union[str, os.PathLike],
        images: np.ndarray,
        labels: np.ndarray,
        class_names: List[str],
        val_fraction: float = 0.2,
        seed: int = 0,
) -> Dict[str, Path]:
    """Write ``root/{train,val}/<class>/<i>.png`` with a stratified-by-shuffle split; returns the split folders."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_val = int(round(len(images) * val_fraction))
    splits = {'val': order[:n_val], 'train': order[n_val:]}
    out = {}
    for split, idx in splits.items():
        for c in class_names:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(images[i]).save(root / split / class_names[labels[i]] / f'{i:05d}.png')
        out[split] = root / split
    return out


def make_digits_imagefolder(
        root: Union[str, os.PathLike],
        size: int = 32,
        val_fraction: float = 0.2,
        per_class: int = 0,
        seed: int = 0,
) -> Dict[str, Path]:
    """The digits as train/val ImageFolders under ``root``; ``per_class`` > 0 keeps only that many per class."""
    images, labels, names = digits_images(size)
    if per_class > 0:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(len(names))])
        images, labels = images[keep], labels[keep]
    return write_imagefolder(root, images, labels, names, val_fraction=val_fraction, seed=seed)


# The real photos scikit-image ships in its wheel (loadable offline) and scikit-learn's two sample photos. Left out:
# skimage's drawings and synthetic images (checkerboard, colorwheel, logo, horse, binary_blobs, phantom), its
# second copy of chelsea ('cat'), the 102 px microaneurysms crop, and everything it must download.
SKIMAGE_PHOTOS = ('astronaut', 'brick', 'camera', 'cell', 'chelsea', 'clock', 'coffee', 'coins', 'grass', 'gravel',
                  'hubble_deep_field', 'immunohistochemistry', 'moon', 'page', 'retina', 'rocket', 'text',
                  'stereo_motorcycle')
SKLEARN_PHOTOS = ('china', 'flower')


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f'expected a uint8 photo, got {image.dtype}')
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


def photo_images() -> Tuple[List[np.ndarray], List[str]]:
    """The photos scikit-image and scikit-learn ship, as uint8 RGB arrays (gray ones repeated to 3 channels), and
    their names; the left view of ``stereo_motorcycle`` is named ``motorcycle``."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise ImportError("the photos dataset needs scikit-image and scikit-learn: pip install 'timm-prelu[demo]'"
                          ) from e
    images, names = [], []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        if name == 'stereo_motorcycle':
            image, name = image[0], 'motorcycle'
        images.append(_to_rgb(image))
        names.append(name)
    sample = load_sample_images()
    for path, image in zip(sample.filenames, sample.images):
        images.append(_to_rgb(image))
        names.append(Path(path).stem)
    return images, names


def photo_regions(height: int, width: int, block: int) -> Dict[str, List[Tuple[int, int, int, int]]]:
    """A checkerboard of ``block`` px squares over a ``height`` x ``width`` photo: ``{'train': [...], 'test': [...]}``
    of (top, left, bottom, right) boxes, test where row + column is odd. The boxes are disjoint, so patches that lie
    inside them never overlap across the splits; the strips past the last whole block are left out."""
    rows, cols = height // block, width // block
    if rows * cols < 2:
        raise ValueError(f'a {height}x{width} photo holds fewer than 2 blocks of {block} px')
    out: Dict[str, List[Tuple[int, int, int, int]]] = {'train': [], 'test': []}
    for r in range(rows):
        for c in range(cols):
            out['test' if (r + c) % 2 else 'train'].append((r * block, c * block, (r + 1) * block, (c + 1) * block))
    return out


def _patches_in(image: np.ndarray, boxes: List[Tuple[int, int, int, int]], size: int, count: int,
                rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` random ``size`` px patches, each wholly inside one of ``boxes``; also their (top, left) corners."""
    which = rng.integers(0, len(boxes), count)
    corners = np.empty((count, 2), dtype=np.int64)
    for i, b in enumerate(which):
        top, left, bottom, right = boxes[b]
        corners[i] = rng.integers(top, bottom - size + 1), rng.integers(left, right - size + 1)
    return np.stack([image[y:y + size, x:x + size] for y, x in corners]), corners


def photo_patches(size: int = 55, short_side: int = 256, train_per_photo: int = 256, test_per_photo: int = 64,
                  seed: int = 0) -> Dict[str, object]:
    """Which-photo patches: each photo, resized to a shorter side of ``short_side`` px, is a class; patches of
    ``size`` px are cut at random (by ``seed``) from the train and the test squares of its checkerboard
    (:func:`photo_regions`, squares of ``short_side // 2``), so no train patch overlaps a test patch.

    Returns ``x_train`` / ``x_test`` (N, size, size, 3) uint8, ``y_train`` / ``y_test`` int64, ``names``, and per
    patch the ``corners_train`` / ``corners_test`` (top, left) in its resized photo and the photos' ``regions``.
    """
    block = short_side // 2
    if not 1 <= size <= block:
        raise ValueError(f'patches of {size} px do not fit the {block} px squares of photos resized to '
                         f'{short_side} px: use a size from 1 to {block}')
    images, names = photo_images()
    rng = np.random.default_rng(seed)
    parts: Dict[str, List[np.ndarray]] = {k: [] for k in ('x_train', 'x_test', 'y_train', 'y_test',
                                                          'corners_train', 'corners_test')}
    regions = []
    for label, image in enumerate(images):
        h, w = image.shape[:2]
        scale = short_side / min(h, w)
        resized = np.asarray(Image.fromarray(image).resize((max(short_side, round(w * scale)),
                                                            max(short_side, round(h * scale))), Image.LANCZOS))
        boxes = photo_regions(*resized.shape[:2], block)
        regions.append(boxes)
        for split, count in (('train', train_per_photo), ('test', test_per_photo)):
            x, corners = _patches_in(resized, boxes[split], size, count, rng)
            parts[f'x_{split}'].append(x)
            parts[f'corners_{split}'].append(corners)
            parts[f'y_{split}'].append(np.full(count, label, dtype=np.int64))
    out: Dict[str, object] = {k: np.concatenate(v) for k, v in parts.items()}
    out.update(names=names, regions=regions)
    return out
