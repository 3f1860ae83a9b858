"""Images for tests: random pixels in any format and mode, hostile files, decompression bombs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "PNG",
                mode: str = "RGB") -> bytes:
    """A random image of ``size`` (width, height), encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return save(Image.fromarray(array.squeeze() if channels == 1 else array, mode), fmt)


def photo_like(seed: int, size: tuple[int, int] = (900, 1200), quality: int = 90) -> bytes:
    """A JPEG with a photograph's statistics, roughly: smooth shading, flat objects with hard
    edges, some grain; ``size`` (height, width)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    image = np.zeros((*size, 3), np.float32)
    for channel in range(3):
        fx, fy, phase = [*rng.uniform(0.002, 0.02, 2).tolist(), rng.uniform(0, 6)]
        image[..., channel] = 128 + 90 * np.sin(fx * x + phase) * np.cos(fy * y)
    for _ in range(12):
        top, left = rng.integers(0, size[0] - 100), rng.integers(0, size[1] - 100)
        image[top:top + rng.integers(40, 300), left:left + rng.integers(40, 300)] = rng.integers(
            0, 256, 3)
    image += rng.normal(0, 6, image.shape)
    return save(Image.fromarray(image.clip(0, 255).astype(np.uint8)), "JPEG", quality=quality)


def write_images(folder: Path, count: int, fmt: str = "JPEG", name: str = "商品 {}.jpg",
                 seed: int = 0) -> list[Path]:
    """``count`` distinct images in ``folder`` (created), named after ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name.format(i) for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(image_bytes(seed + i, fmt=fmt))
    return paths


def save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A valid PNG of width x height pixels that is only kilobytes on disk (all zeros)."""
    bits = bit_depth * {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\x00" + b"\x00" * ((width * bits + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def scan_bomb(side: int, scans: int) -> bytes:
    """A flat progressive JPEG followed by ``scans`` AC refinement scans of a few bytes each.

    libjpeg walks every block of the image again for each scan: decode time grows with side^2 x
    scans while the file stays small (8192 px and 3,000 scans: ~0.5 MB, tens of seconds).
    """
    data = save(Image.new("RGB", (side, side), (120, 130, 140)), "JPEG", progressive=True,
                quality=50)
    body, end = data[:-2], data[-2:]
    # SOS for one component (Cb): spectral 1..63, successive approximation refinement Ah=1.
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x02\x11" + bytes([1, 63, 0x10])
    return body + (sos + b"\x00") * scans + end


def image_folder(folder: Path, count: int = 3) -> Path:
    """``count`` PNGs (0.png, 1.png, ...) and a notes.txt that is not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i}.png").write_bytes(image_bytes(i))
    (folder / "notes.txt").write_text("not an image")
    return folder
