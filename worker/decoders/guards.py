"""An image's header, checked before any pixel is decoded: format, pixels, memory, EXIF."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from worker.core.errors import ItemError, Reason
from worker.decoders import Limits

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Bytes per pixel of Pillow's in-memory modes (RGB is stored in 4 bytes, as RGBA is).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Full-size copies decoding makes beyond the first: conversion, alpha composing, and WebP's
# own decode buffer. Measured with tracemalloc-free RSS on the worst cases of each format.
_COPIES = {"WEBP": 3, "PNG": 2, "GIF": 2, "TIFF": 2}


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
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.UnidentifiedImageError as exc:
        raise ItemError(Reason.UNDECODABLE,
                        f"not a {'/'.join(ALLOWED_FORMATS)} image") from exc
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


def describe(image: Image.Image) -> Header:
    """The header, and an estimate of the peak bytes a full decode of it takes."""
    width, height = image.size
    per_pixel = _BYTES_PER_PIXEL.get(image.mode, 4)
    memory = width * height * (per_pixel + 4 * _COPIES.get(image.format or "", 1))
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: decode as stored
        orientation = 1
    return Header(image.format or "?", width, height, image.mode, memory,
                  orientation if 1 <= orientation <= 8 else 1)
