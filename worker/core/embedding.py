"""A kept image embedding's stored form: float16, high bytes Huffman-coded, low bytes as they are.

512 float16 values are 1,024 bytes. The low byte of each value is close to random, but the high
byte (sign, exponent, two mantissa bits) of a normalised embedding carries ~5.5 bits: raw
deflate of the 512 high bytes alone (Huffman only: there are no repeats to find) takes ~390
bytes. Deflating all 1,024 bytes together saves almost nothing (one Huffman table for both
streams), which is why they are split. Lossless: the stored bytes decode to exactly the float16
of the normalised embedding the image tower computed. Deflate has no checksum: each stored row
is checked on its own when decoded (its exact length, its norm), and a damaged one fails only its
image (``corrupt-embedding``).

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
from typing import TYPE_CHECKING, NamedTuple

from worker.core.errors import ItemError, Reason

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


class Unpacked(NamedTuple):
    """Stored embeddings decoded, each row on its own: one damaged row fails its image alone."""

    vectors: np.ndarray  # (N, dim) float16; a corrupt row is all zeros
    corrupt: dict[int, str]  # row index -> what is wrong with its stored form


NORM_TOLERANCE = 0.02  # a normalised embedding in float16 is 1 long to within ~0.001


def unpack(blobs: Sequence[bytes], dim: int) -> Unpacked:
    """Stored embeddings back to float16, (N, dim). A row is corrupt unless it inflates to
    exactly ``dim`` high bytes followed by exactly ``dim`` low bytes and the vector is
    normalised: a row one byte long or short would otherwise be read shifted."""
    import numpy as np

    highs: list[bytes] = []
    lows: list[bytes] = []
    corrupt: dict[int, str] = {}
    inflater, zeros = zlib.decompressobj, bytes(dim)
    for index, blob in enumerate(blobs):  # a few us each, most of it inflating
        inflate = inflater(-15)
        try:
            high = inflate.decompress(blob, dim + 1)  # never more than one value too many
        except zlib.error as exc:
            corrupt[index] = f"does not inflate ({exc})"
        else:
            low = inflate.unused_data
            if inflate.eof and len(high) == dim and len(low) == dim:
                highs.append(high)
                lows.append(low)
                continue
            corrupt[index] = _problem(high, low, inflate.eof, dim)
        highs.append(zeros)
        lows.append(zeros)
    words = np.empty((len(blobs), dim), "<u2")
    words[:] = np.frombuffer(b"".join(highs), np.uint8).reshape(len(blobs), dim)
    words <<= 8
    words |= np.frombuffer(b"".join(lows), np.uint8).reshape(len(blobs), dim)
    vectors = words.view("<f2")
    wide = vectors.astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))  # einsum: a tenth of np.linalg.norm's
    for index in np.flatnonzero(~(np.abs(norms - 1) <= NORM_TOLERANCE)).tolist():
        if index not in corrupt:  # NaN or infinite values fail this too
            corrupt[index] = f"not a normalised embedding (length {norms[index]:.4g})"
            vectors[index] = 0
    return Unpacked(vectors, corrupt)


def _problem(high: bytes, low: bytes, ended: bool, dim: int) -> str:
    """What is wrong with a stored form that inflated without an error."""
    if len(high) > dim:
        return f"holds over {dim} values"
    if not ended:
        return "is cut short"
    if len(high) < dim:
        return f"holds {len(high)} of {dim} values"
    off = len(low) - dim
    return f"is {abs(off)} byte{'s' * (abs(off) > 1)} too {'long' if off > 0 else 'short'}"


def damaged(sha256: str, problem: str) -> ItemError:
    """The failure of an image whose kept embedding is corrupt (it is removed when found)."""
    return ItemError(Reason.CORRUPT_EMBEDDING, f"the kept embedding of its content "
                     f"({sha256[:12]}...) {problem}; it was removed: `producer retry-failed "
                     "--reason corrupt-embedding` fetches the image again")


def spans(parts: int) -> Iterator[tuple[int, int]]:
    """The key space in ``parts`` equal ranges [lo, hi] (inclusive: every bound is an int8);
    content hashes spread evenly over them."""
    width = (KEY_MAX - KEY_MIN + 1) // parts
    starts = [KEY_MIN + i * width for i in range(parts)]
    yield from zip(starts, [s - 1 for s in starts[1:]] + [KEY_MAX], strict=True)
