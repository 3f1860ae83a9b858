"""An image's header, checked before any pixel is decoded (format, pixels, memory, EXIF), and
the limits a decoding process runs under."""

from __future__ import annotations

import functools
import importlib
import io
from dataclasses import dataclass

from PIL import Image

from worker.core.errors import ItemError, Reason
from worker.decoders import DECODERS, Limits, declared

# Peak bytes per pixel of a whole decode to model-sized RGB, by the mode Pillow opens: the
# decoded image (RGB is stored in 4 bytes, as RGBA), then conversion and alpha-composing
# copies. Measured on 36-megapixel images (peak RSS, one process each): PNG RGB 8.1, RGBA 12.1,
# LA 12.1, P with transparency 18.0, I;16 16.0; TIFF RGB 8.1; BMP 8.1; GIF 6.1; JPEG CMYK 15.
_PEAK_BYTES = {"1": 6, "L": 6, "P": 19, "RGB": 9, "YCbCr": 9, "RGBA": 13, "RGBa": 13,
               "LA": 13, "La": 13, "PA": 19, "CMYK": 16, "I;16": 17, "I;16B": 17, "I;16L": 17,
               "I;16N": 17, "I": 17, "F": 17}
# WebP decodes into a buffer of its own first: RGB measured 16.2, RGBA 20.1.
_EXTRA_BYTES = {"WEBP": 8}


@dataclass(frozen=True)
class Header:
    """What the header says: format, decoded size and mode, frames, and the bytes it will need."""

    format: str
    width: int
    height: int
    mode: str
    memory: int
    orientation: int = 1  # EXIF orientation: 1 upright, 2-8 flipped and/or rotated


def open_checked(data: bytes, limits: Limits, draft_size: tuple[int, int] | None = None
                 ) -> Image.Image:
    """Open ``data`` lazily (header only) and refuse it before decoding if it is over a limit."""
    if not data:
        raise ItemError(Reason.EMPTY, "zero-byte file")
    formats = allowed_formats()
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except Image.UnidentifiedImageError as exc:
        raise ItemError(Reason.UNDECODABLE, f"not a {'/'.join(formats)} image") from exc
    except Image.DecompressionBombError as exc:
        raise ItemError(Reason.TOO_MANY_PIXELS, f"decompression bomb guard: {exc}") from exc
    except Exception as exc:  # a damaged header raises OSError, SyntaxError, struct.error, ...
        raise ItemError(Reason.UNDECODABLE, f"{type(exc).__name__}: {exc}") from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ItemError(Reason.TOO_MANY_PIXELS,
                        f"{width}x{height} is over the limit of {limits.max_pixels} pixels "
                        "(decompression bomb guard)")
    if draft_size and limits.jpeg_draft and image.format == "JPEG":
        # DCT-domain downscale: decode at 1/2..1/8 size, still at least the model's size.
        image.draft("RGB", draft_size)
    header = describe(image)
    if header.memory > limits.max_memory:
        raise ItemError(Reason.TOO_MUCH_MEMORY,
                        f"{header.format} {header.width}x{header.height} {header.mode} would "
                        f"take ~{header.memory // 2**20} MiB to decode, over the limit of "
                        f"{limits.max_memory // 2**20} MiB (TAGGER_MAX_IMAGE_MEMORY)")
    return image


def allowed_formats() -> tuple[str, ...]:
    """The formats the registered decoders declare, as Pillow opens them: each decoder's
    opener imported first (it registers its formats with Pillow)."""
    return _allowed(DECODERS.version)


@functools.lru_cache(maxsize=4)
def _allowed(_version: int) -> tuple[str, ...]:
    for module in declared("opener"):
        importlib.import_module(module)
    Image.init()
    return tuple(f for f in declared("formats") if f in Image.OPEN)


def describe(image: Image.Image) -> Header:
    """The header, and an estimate of the peak bytes a full decode of it takes."""
    width, height = image.size
    per_pixel = _PEAK_BYTES.get(image.mode, 17) + _EXTRA_BYTES.get(image.format or "", 0)
    memory = width * height * per_pixel
    try:
        # A PNG's eXIf chunk may follow the pixels: Pillow would decode them all to look for it
        # (decode_image still applies it, after the checks).
        exif = (image.getexif() if image.format != "PNG" or "exif" in image.info
                else Image.Exif())
        orientation = int(exif.get(0x0112, 1))
    except Exception:  # a damaged EXIF block: decode as stored
        orientation = 1
    return Header(image.format or "?", width, height, image.mode, memory,
                  orientation if 1 <= orientation <= 8 else 1)
