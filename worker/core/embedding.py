"""A kept image embedding's stored form: float16, high bytes Huffman-coded, low bytes as they are.

512 float16 values are 1,024 bytes. The low byte of each value is close to random, but the high
byte (sign, exponent, two mantissa bits) of a normalised embedding carries ~5.5 bits: raw
deflate of the 512 high bytes alone (Huffman only: there are no repeats to find) takes ~390
bytes. Deflating all 1,024 bytes together saves almost nothing (one Huffman table for both
streams), which is why they are split. Lossless: the stored bytes decode to exactly the float16
of the normalised embedding the image tower computed.

A kept embedding is keyed by (model, ``key``): ``key`` is the first 8 bytes of the content's
SHA-256 as a signed 64-bit integer (offset so that its order is the hash's byte order), which
makes the index entry small and lets relabel work be split into ranges of integers. The full
SHA-256 is stored beside it and checked on every read: a (rare) 64-bit collision is an image
that is simply not kept.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

KEY_MIN, KEY_MAX = -(2**63), 2**63 - 1
_DEFLATE = (9, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)  # raw deflate: no header, no checksum


def key_of(sha256: bytes) -> int:
    """The indexed key of a content hash: its first 8 bytes, in the same order, as an int8."""
    return int.from_bytes(sha256[:8], "big") + KEY_MIN


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(vector: np.ndarray) -> bytes:
    """One normalised embedding (D,) as stored: deflated high bytes, then the D low bytes."""
    import numpy as np  # here: the producer imports this module, and starts without NumPy

    planes = np.ascontiguousarray(vector, dtype="<f2").view(np.uint8).reshape(-1, 2)
    deflate = zlib.compressobj(*_DEFLATE)
    return deflate.compress(planes[:, 1].tobytes()) + deflate.flush() + planes[:, 0].tobytes()


def unpack(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Stored embeddings back to float16, (N, dim); ValueError if they are not ``dim`` wide."""
    import numpy as np

    try:  # ~4 us per embedding, most of it inflating: relabelling reads 20,000 a second
        highs = b"".join([zlib.decompress(blob[:-dim], -15) for blob in blobs])
    except zlib.error as exc:
        raise ValueError(f"a kept embedding does not decode: {exc}") from None
    lows = b"".join([blob[-dim:] for blob in blobs])
    if len(highs) != len(lows) or len(lows) != len(blobs) * dim:
        raise ValueError(f"kept embeddings are not {dim} values wide")
    words = np.empty((len(blobs), dim), "<u2")
    words[:] = np.frombuffer(highs, np.uint8).reshape(len(blobs), dim)
    words <<= 8
    words |= np.frombuffer(lows, np.uint8).reshape(len(blobs), dim)
    return words.view("<f2")


def spans(parts: int) -> Iterator[tuple[int, int]]:
    """The key space in ``parts`` equal ranges [lo, hi] (inclusive: every bound is an int8);
    content hashes spread evenly over them."""
    width = (KEY_MAX - KEY_MIN + 1) // parts
    starts = [KEY_MIN + i * width for i in range(parts)]
    yield from zip(starts, [s - 1 for s in starts[1:]] + [KEY_MAX], strict=True)
