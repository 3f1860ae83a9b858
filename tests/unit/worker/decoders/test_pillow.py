"""Bad and unusual image bytes: each becomes model-ready pixels or a clear per-item error."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from testkit.images import image_bytes, png_bomb, save
from worker.core.errors import ItemError
from worker.core.pixels import Preprocess
from worker.decoders import Limits
from worker.decoders.guards import describe, open_checked
from worker.decoders.pillow import decode_image, to_rgb

SPEC = Preprocess(height=32, width=32)
PILLOW_LIMIT = 89_478_485  # Pillow's own MAX_IMAGE_PIXELS: above it Pillow only warns
LIMITS = Limits(max_pixels=PILLOW_LIMIT, max_memory=2**30, seconds=30)


def limits(**changes: object) -> Limits:
    return Limits(**{**LIMITS.__dict__, **changes})  # type: ignore[arg-type]


def reason_of(data: bytes, **changes: object) -> str:
    with pytest.raises(ItemError) as info:
        decode_image(data, SPEC, limits(**changes))
    assert str(info.value)  # a message a person can act on, not an empty error
    return info.value.reason


def pixels(data: bytes, draft: bool = True) -> np.ndarray:
    out = decode_image(data, SPEC, limits(jpeg_draft=draft))
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
    assert decode_image(data, SPEC, limits(max_pixels=20_000)).shape == (32, 32, 3)


def test_pixel_cap_is_checked_on_the_header_alone():
    # A bomb the size of a few kilobytes: refused by open_checked before any pixel is decoded.
    image = open_checked(png_bomb(4000, 4000), limits(max_pixels=16_000_000))
    assert image.size == (4000, 4000) and image.tile  # opened lazily: tiles not decoded yet
    with pytest.raises(ItemError, match="4000x4000 is over the limit"):
        open_checked(png_bomb(4000, 4000), limits(max_pixels=15_999_999))


def test_memory_estimate_refuses_before_decoding():
    # 3000 x 3000 RGB under the pixel cap, but decoding it takes ~100 MiB.
    data = png_bomb(3000, 3000, bit_depth=8, color_type=2)
    image = open_checked(data, LIMITS)
    assert image.tile  # the header was read, not the pixels
    header = describe(image)
    assert (header.format, header.mode, header.width) == ("PNG", "RGB", 3000)
    assert header.memory > 64 * 2**20
    with pytest.raises(ItemError, match="TAGGER_MAX_IMAGE_MEMORY") as info:
        open_checked(data, limits(max_memory=64 * 2**20))
    assert info.value.reason == "too-much-memory"
    assert reason_of(data, max_memory=64 * 2**20) == "too-much-memory"
    assert decode_image(data, SPEC, limits(max_memory=header.memory)).shape == (32, 32, 3)


def test_jpeg_draft_decodes_smaller_but_alike():
    photo = Image.radial_gradient("L").resize((1024, 768)).convert("RGB")
    data = save(photo, "JPEG", quality=95)
    drafted = open_checked(data, LIMITS, draft_size=(32, 32))
    assert drafted.size[0] < 1024 and min(drafted.size) >= 32  # DCT-scaled, not below 32
    assert open_checked(data, limits(jpeg_draft=False), draft_size=(32, 32)).size == (1024, 768)
    fast = pixels(data, draft=True).astype(int)
    full = pixels(data, draft=False).astype(int)
    assert np.abs(fast - full).mean() < 3


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
    data = image_bytes(5, size=(50, 30), fmt=fmt)
    with Image.open(io.BytesIO(data)) as stored:  # what Pillow itself makes of these bytes
        assert stored.format == fmt
        expected = np.asarray(stored.convert("RGB").resize(
            (32, 32), resample=Image.Resampling.BICUBIC)).astype(int)
    got = pixels(data).astype(int)
    assert np.abs(got - expected).mean() < 1.0 and got.std() > 10  # this image, not a blank


def test_damaged_exif_is_decoded_as_stored():
    stored = Image.new("RGB", (64, 32), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 99  # not an orientation
    data = save(stored, "JPEG", exif=exif)
    assert describe(open_checked(data, LIMITS)).orientation == 1
    assert pixels(data)[..., 1].min() > 150


def test_large_transparent_image_is_resized_before_it_is_composed():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (900, 1400, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 1400, dtype=np.uint8)[None, :]  # a transparency ramp
    spec = Preprocess(height=56, width=64)
    got = decode_image(save(Image.fromarray(rgba, "RGBA"), "PNG"), spec,
                       limits(max_pixels=10**8)).astype(int)
    reference = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")).resize(
        (64, 56), resample=Image.Resampling.BICUBIC)).astype(int)
    assert got.shape == (56, 64, 3)
    assert np.abs(got - reference).mean() < 1.0
    assert got[:, :4].mean() > 240  # the transparent edge is white, not black


def test_shortest_edge_resize_then_centre_crop():
    # Left third red, middle green, right third blue: the centre crop keeps only the green.
    image = Image.new("RGB", (300, 100), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 100, 100))
    image.paste((0, 0, 255), (200, 0, 300, 100))
    spec = Preprocess(height=32, width=32, shortest_edge=32)
    out = decode_image(save(image, "PNG"), spec, LIMITS).astype(int)
    assert out.shape == (32, 32, 3)
    assert out[:, 4:-4, 1].min() > 200 and out[:, 4:-4, [0, 2]].max() < 60


def test_item_errors_survive_pickling():
    import pickle

    with pytest.raises(ItemError) as info:
        decode_image(b"", SPEC, LIMITS)
    again = pickle.loads(pickle.dumps(info.value))  # as it comes back from a decoder process
    assert (again.reason, str(again)) == (info.value.reason, str(info.value))
