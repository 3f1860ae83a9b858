"""Bad and unusual image bytes: each becomes model-ready pixels or a clear per-item error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import image_bytes
from worker.decode import Preprocess, decode
from worker.errors import ItemError

SPEC = Preprocess(height=32, width=32)
PILLOW_LIMIT = 89_478_485  # Pillow's own MAX_IMAGE_PIXELS: above it Pillow only warns


def save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height pixels that is only a few kilobytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(row * height, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def reason_of(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ItemError) as info:
        decode(data, SPEC, max_pixels=kwargs.pop("max_pixels", PILLOW_LIMIT), **kwargs)
    assert str(info.value)  # a message a person can act on, not an empty error
    return info.value.reason


def pixels(data: bytes, draft: bool = True) -> np.ndarray:
    out = decode(data, SPEC, max_pixels=PILLOW_LIMIT, draft=draft)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    return out


def test_zero_bytes_is_empty():
    assert reason_of(b"") == "empty"


def test_text_named_jpg_is_undecodable():
    assert reason_of("这不是图片, just text\n".encode()) == "undecodable"


def test_truncated_jpeg_is_undecodable():
    data = image_bytes(1, size=(64, 64), fmt="JPEG")
    assert reason_of(data[: len(data) // 2]) == "undecodable"


def test_damaged_png_header_is_undecodable():
    assert reason_of(b"\x89PNG\r\n\x1a\n truncated") == "undecodable"


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "PCX"])
def test_formats_outside_the_allow_list_are_refused(fmt):
    # Pillow opens all of these without an explicit formats= list; we refuse them.
    data = image_bytes(2, size=(16, 16), fmt=fmt)
    assert Image.open(io.BytesIO(data)).format == fmt
    assert reason_of(data) == "undecodable"


def test_psd_is_refused():
    # A minimal PSD header: Pillow's PSD plugin would parse it; our allow-list must not.
    header = b"8BPS" + struct.pack(">H6sHIIHH", 1, b"\0" * 6, 3, 16, 16, 8, 3)
    data = header + struct.pack(">I", 0) * 3 + struct.pack(">H", 0) + b"\0" * (16 * 16 * 3)
    assert Image.open(io.BytesIO(data)).format == "PSD"
    assert reason_of(data) == "undecodable"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("megapixels", [100, 150])
def test_decompression_bomb_between_pillow_warning_and_error(megapixels):
    # 100 MP and 150 MP lie between Pillow's warning (89.5 MP) and its error (179 MP): Pillow
    # alone would decode them (hundreds of MB) after a warning. Our guard refuses them.
    side = int((megapixels * 1_000_000) ** 0.5)
    data = png_bomb(side, side)
    assert len(data) < 200_000
    assert reason_of(data) == "too-many-pixels"


def test_pixel_cap_below_pillows_own():
    data = image_bytes(3, size=(200, 100))
    assert reason_of(data, max_pixels=19_999) == "too-many-pixels"
    assert decode(data, SPEC, max_pixels=20_000).shape == (32, 32, 3)


def test_cmyk_jpeg_becomes_rgb():
    white = pixels(save(Image.new("CMYK", (40, 40), (0, 0, 0, 0)), "JPEG"))
    cyan = pixels(save(Image.new("CMYK", (40, 40), (255, 0, 0, 0)), "JPEG"))
    assert white.min() > 240
    assert cyan[..., 0].max() < 20 and cyan[..., 1:].min() > 235


def test_16_bit_png_is_scaled_not_clipped():
    array = np.full((40, 40), 65535, np.uint16)
    array[:20] = 100 * 256  # top half dark grey, bottom half white, in 16 bits
    out = pixels(save(Image.fromarray(array), "PNG"))
    assert abs(int(out[2, 16, 0]) - 100) <= 2
    assert out[-2, 16].min() >= 250
    assert (out[..., 0] == out[..., 1]).all()


def test_palette_png_transparency_goes_onto_white():
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 20, 40, 40))  # bottom half red, top half transparent black
    out = pixels(save(image, "PNG", transparency=0))
    assert out[2, 16].min() >= 250  # white, not black
    assert tuple(out[-2, 16]) == (255, 0, 0)


def test_rgba_transparency_goes_onto_white():
    out = pixels(save(Image.new("RGBA", (20, 20), (0, 0, 0, 0)), "PNG"))
    assert out.min() >= 250


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_image_uses_its_first_frame(fmt):
    frames = [Image.new("RGB", (40, 40), color) for color in ((255, 0, 0), (0, 0, 255))]
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                **options)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = pixels(data)
    assert out[..., 0].min() > 240 and out[..., 2].max() < 15


@pytest.mark.parametrize("draft", [True, False])
def test_exif_rotated_jpeg_is_tagged_upright(draft):
    # Stored landscape: left half red, right half blue. Orientation 6 = "rotate 90° clockwise
    # to display", so upright the red half is on top and the blue half at the bottom.
    stored = Image.new("RGB", (128, 64), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 64, 64))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = pixels(save(stored, "JPEG", exif=exif, quality=95), draft=draft).astype(int)
    top, bottom = out[:8].mean(axis=(0, 1)), out[-8:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_grayscale_becomes_three_equal_channels():
    out = pixels(image_bytes(4, size=(30, 20), mode="L"))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out.std() > 10  # the content survived


def test_one_pixel_image():
    out = pixels(save(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"))
    assert (out == np.array([10, 200, 30], np.uint8)).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_allowed_formats_decode(fmt):
    pixels(image_bytes(5, size=(50, 30), fmt=fmt))
