"""Loading images for inference: any file PIL reads becomes an 8-bit RGB image, or a clear, skippable error.

Grayscale, palette, alpha, CMYK and 16-bit images are converted to RGB and the conversion is reported as a note
(alpha is dropped, as timm's training loader does). A size limit checked from the file header, before any pixel
is decoded, keeps a huge (or maliciously declared) image from exhausting memory.
"""
import contextlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

__all__ = ['ImageError', 'LoadedImage', 'load_image', 'to_rgb', 'DEFAULT_MAX_IMAGE_PIXELS']

# PIL's own decompression-bomb threshold (about 89.5 Mpx, 268 MB as RGB); ours is checked before decoding.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_EXIF_ORIENTATION = 0x0112


@dataclass
class LoadedImage:
    """An RGB image with what was done to get it there."""
    image: Image.Image
    path: Optional[Path] = None
    notes: List[str] = field(default_factory=list)


@contextlib.contextmanager
def _without_pil_pixel_limit() -> Iterator[None]:
    # load_image checks its own limit from the header, before decoding; PIL's global one would pre-empt it
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _high_bit_depth_to_uint8(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float single-channel image -> 8-bit 'L', scaled (PIL's convert would clip)."""
    arr = np.asarray(img)
    if img.mode == 'F':
        arr = arr.astype(np.float64)
        scale = 1.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0 / 255.0
        out = np.clip(np.nan_to_num(arr) * scale * 255.0, 0, 255)
    else:
        # 'I;16*' is 16-bit; PNG's 16-bit gray may also arrive as 32-bit 'I' holding 16-bit values
        bits = 16 if img.mode.startswith('I;16') or arr.max(initial=0) <= 65535 else 32
        out = np.clip(arr.astype(np.float64), 0, 2 ** bits - 1) * (255.0 / (2 ** bits - 1))
    return Image.fromarray(np.round(out).astype(np.uint8), mode='L')


def to_rgb(img: Image.Image, notes: Optional[List[str]] = None) -> Image.Image:
    """Convert any PIL image to 8-bit RGB, appending a note for every conversion that changes information."""
    notes = notes if notes is not None else []
    mode = img.mode
    if mode == 'RGB':
        return img
    if mode in ('I', 'F') or mode.startswith('I;16'):
        notes.append(f'{mode} ({"float" if mode == "F" else "16/32-bit"}) grayscale scaled to 8-bit RGB')
        return _high_bit_depth_to_uint8(img).convert('RGB')
    if mode == 'P':
        has_alpha = 'transparency' in img.info
        notes.append('palette image converted to RGB' + (' (transparency dropped)' if has_alpha else ''))
        return img.convert('RGBA' if has_alpha else 'RGB').convert('RGB')
    if mode in ('RGBA', 'RGBa', 'LA', 'La', 'PA'):
        notes.append(f'{mode} image: alpha channel dropped (as timm\'s loader does)')
        return img.convert('RGB')
    if mode in ('L', '1'):
        notes.append('grayscale image replicated to RGB')
        return img.convert('RGB')
    notes.append(f'{mode} image converted to RGB')
    return img.convert('RGB')


def load_image(
        path: Union[str, os.PathLike],
        max_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
        min_size: int = 1,
) -> LoadedImage:
    """Open ``path`` as an 8-bit RGB image.

    Args:
        path: Any image file PIL can read.
        max_pixels: Largest width * height accepted (checked from the header, before decoding); None for no limit.
        min_size: Smallest accepted side in pixels (e.g. the network's minimum input size).

    Raises:
        ImageError: the file is missing, not an image, truncated, too large or too small.
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():  # a pipe or a device would block or never end
            raise ImageError(f'{path}: not a regular file (a folder, pipe or device): pass an image file',
                             param='path')
        raise ImageError(f'{path}: no such file: check the path', param='path')
    notes: List[str] = []
    try:
        with _without_pil_pixel_limit():
            with Image.open(path) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageError(
                        f'{path}: image is {w}x{h} px ({w * h / 1e6:.1f} Mpx), over the limit of '
                        f'{max_pixels / 1e6:.1f} Mpx: downscale it first, or raise the limit (max_pixels)',
                        param='path')
                if getattr(img, 'n_frames', 1) > 1:
                    notes.append(f'{img.n_frames} frames: using the first')
                img.load()
                if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                    img = ImageOps.exif_transpose(img)
                    notes.append('rotated by its EXIF orientation')
                rgb = to_rgb(img, notes)
                rgb = rgb.copy() if rgb is img else rgb  # detach from the file before it closes
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(f'{path}: not an image file (PIL cannot identify it): remove it or convert it to JPEG/PNG',
                         param='path') from e
    except MemoryError as e:
        raise ImageError(f'{path}: not enough memory to decode it: downscale it first, or lower the pixel limit',
                         param='path') from e
    # truncated or corrupt data, unsupported codec: what PIL's decoders raise on damaged files
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageError(f'{path}: cannot decode the image ({e}): the file is corrupt or truncated; replace it',
                         param='path') from e
    if min(rgb.size) < min_size:
        raise ImageError(
            f'{path}: image is {rgb.size[0]}x{rgb.size[1]} px, smaller than the minimum of {min_size} px per side: '
            f'use a larger image', param='path')
    return LoadedImage(rgb, path, notes)
