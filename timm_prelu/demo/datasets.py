"""Small real image datasets for tests, the demo and the depth experiment, built from data a package ships.

scikit-learn bundles 1,797 real 8x8 scans of handwritten digits (UCI optdigits); they are upsampled to RGB
images so the PReLU-nets (minimum input 15 px) and timm's ImageFolder pipeline can use them unchanged.
"""
import os
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
from PIL import Image

__all__ = ['digits_images', 'write_imagefolder', 'make_digits_imagefolder']


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
