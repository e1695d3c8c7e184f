"""Image loading for inference: conversions to 8-bit RGB with notes, and clear errors for files that cannot be used."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from timm_prelu.errors import UserError
from timm_prelu.inference.images import ImageError, load_image


@pytest.fixture
def rgb_array():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


def test_rgb_loads_unchanged(tmp_path, rgb_array):
    Image.fromarray(rgb_array).save(tmp_path / 'a.png')
    loaded = load_image(tmp_path / 'a.png')
    assert loaded.image.mode == 'RGB' and loaded.notes == []
    np.testing.assert_array_equal(np.asarray(loaded.image), rgb_array)


@pytest.mark.parametrize('mode, note', [('L', 'grayscale'), ('RGBA', 'alpha'), ('P', 'palette'), ('CMYK', 'CMYK')])
def test_other_modes_become_rgb_with_a_note(tmp_path, rgb_array, mode, note):
    img = Image.fromarray(rgb_array).convert(mode)
    path = tmp_path / ('a.tif' if mode == 'CMYK' else 'a.png')
    img.save(path)
    loaded = load_image(path)
    assert loaded.image.mode == 'RGB' and loaded.image.size == (30, 20)
    assert any(note in n for n in loaded.notes), loaded.notes
    if mode == 'L':
        np.testing.assert_array_equal(np.asarray(loaded.image)[..., 0], np.asarray(img))


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / 'deep.png')
    assert Image.open(tmp_path / 'deep.png').mode.startswith('I')
    loaded = load_image(tmp_path / 'deep.png')
    out = np.asarray(loaded.image)
    assert loaded.image.mode == 'RGB'
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])  # PIL's own convert would clip 257.. to 255
    assert any('16' in n for n in loaded.notes)


def test_non_image_file_is_a_clear_image_error(tmp_path):
    (tmp_path / 'notes.jpg').write_text('not an image')
    with pytest.raises(ImageError, match='not an image file'):
        load_image(tmp_path / 'notes.jpg')
    assert issubclass(ImageError, UserError)


def test_truncated_image_is_a_clear_image_error(tmp_path, rgb_array):
    Image.fromarray(rgb_array).resize((300, 200)).save(tmp_path / 'full.jpg', quality=95)
    data = (tmp_path / 'full.jpg').read_bytes()
    (tmp_path / 'cut.jpg').write_bytes(data[:len(data) // 3])
    with pytest.raises(ImageError, match='corrupt or truncated'):
        load_image(tmp_path / 'cut.jpg')


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match='no such file'):
        load_image(tmp_path / 'nope.png')


def test_image_below_the_minimum_size(tmp_path):
    Image.new('RGB', (40, 9)).save(tmp_path / 'thin.png')
    with pytest.raises(ImageError, match='smaller than the minimum of 15 px'):
        load_image(tmp_path / 'thin.png', min_size=15)
    assert load_image(tmp_path / 'thin.png', min_size=9).image.size == (40, 9)


def test_pixel_limit(tmp_path):
    Image.new('RGB', (100, 60)).save(tmp_path / 'a.png')
    with pytest.raises(ImageError, match=r'100x60 px .* over the limit'):
        load_image(tmp_path / 'a.png', max_pixels=5000)
    assert load_image(tmp_path / 'a.png', max_pixels=6000).image.size == (100, 60)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size but holds almost no data: decoding it would need width*height*3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b'\x00' * 16)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat) + chunk(b'IEND', b'')


def test_huge_declared_size_is_refused_before_decoding(tmp_path):
    (tmp_path / 'bomb.png').write_bytes(_png_header_only(200_000, 150_000))  # 30 Gpx, 90 GB as RGB
    with pytest.raises(ImageError, match=r'200000x150000 px .* over the limit'):
        load_image(tmp_path / 'bomb.png')
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # PIL's global limit is restored


def _damaged(rgb_array, tmp_path):
    """Damaged files of several formats, each as a user might receive it."""
    Image.fromarray(rgb_array).save(tmp_path / 'ok.png')
    Image.fromarray(rgb_array).save(tmp_path / 'ok.gif')
    Image.fromarray(rgb_array).save(tmp_path / 'ok.jpg')
    png, gif, jpg = ((tmp_path / f'ok.{e}').read_bytes() for e in ('png', 'gif', 'jpg'))
    idat = png.index(b'IDAT') + 8
    return {
        'empty.png': b'',
        'signature-only.png': png[:8],
        'header-only.png': png[:33],
        'idat-crc.png': png[:idat] + bytes([png[idat] ^ 0x10]) + png[idat + 1:],
        'idat-garbage.png': png[:idat] + b'\xff' * 40 + png[idat + 40:],
        'zero-size.png': _png_header_only(0, 0),
        'gif-cut.gif': gif[:len(gif) // 2],
        'jpeg-header.jpg': jpg[:20],
        'jpeg-garbage.jpg': jpg[:200] + bytes(range(256)) * 4,
    }


def test_damaged_images_are_clear_image_errors(tmp_path, rgb_array):
    for name, data in _damaged(rgb_array, tmp_path).items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError) as e:
            load_image(tmp_path / name).image.load()
        assert name in str(e.value) and '\n' not in str(e.value), name
        assert e.value.param == 'path' and e.value.__cause__ is not None, name  # the decoder's error is kept
