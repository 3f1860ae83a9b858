"""Images of any sizes resized to the model's size in one call: Pillow's filter, as matrices.

Pillow's bicubic resize with ``reducing_gap`` (what the CPU path does) is separable: a box
reduction by an integer factor, then an antialiased bicubic filter whose support grows with the
scale. Along each axis both are one matrix (output pixels x input pixels), so a batch of images
of different sizes is padded into one canvas and resized by two batched matrix products, with
each image's own matrices: no call per size (a varied catalogue has many), and no kernel whose
shared memory grows with the scale (a 19,000 px panorama). Matrices are built here in NumPy,
once per size; torch is imported only inside the functions (decode processes never load it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from worker.core.pixels import Preprocess

if TYPE_CHECKING:
    import torch

REDUCING_GAP = 3.0  # as worker/decoders/pillow.py
CUBIC_A = -0.5  # Pillow's (and torch's antialiased) bicubic


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    a = CUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _filter(in_size: int, extent: float, out_size: int) -> np.ndarray:
    """Pillow's precompute_coeffs: (out_size, in_size) weights resampling [0, extent)."""
    scale = extent / out_size
    support_scale = max(scale, 1.0)
    support = 2.0 * support_scale
    centre = (np.arange(out_size) + 0.5) * scale
    low = np.maximum((centre - support + 0.5).astype(int), 0)[:, None]
    high = np.minimum((centre + support + 0.5).astype(int), in_size)[:, None]
    source = np.arange(in_size)[None, :]
    taps = _cubic((source - centre[:, None] + 0.5) / support_scale)
    taps = np.where((source >= low) & (source < high), taps, 0.0)
    total = taps.sum(axis=1, keepdims=True)
    return np.divide(taps, total, out=np.zeros_like(taps), where=total != 0)


def _through_reduce(weights: np.ndarray, in_size: int, factor: int) -> np.ndarray:
    """``weights`` over the pixels Image.reduce(``factor``) makes of ``in_size`` pixels, as
    weights over those ``in_size``: each reduced pixel is the mean of its block (a short last
    block too)."""
    block = np.arange(in_size) // factor
    return weights[:, block] / np.bincount(block)[block]  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=512)
def axis_weights(in_size: int, out_size: int, keep: tuple[int, int], draft: int = 1
                 ) -> np.ndarray:
    """(kept outputs, in_size) float32 along one axis: libjpeg's draft scale (``draft``:
    1, 2, 4 or 8, a mean of that many pixels), Pillow's reduction by ``REDUCING_GAP``, then its
    bicubic filter; ``keep``: the outputs kept (a centre crop), as (first, count)."""
    drafted = -(-in_size // draft)
    factor = int(drafted / out_size / REDUCING_GAP) or 1
    weights = _filter(-(-drafted // factor), drafted / factor, out_size)
    if factor > 1:
        weights = _through_reduce(weights, drafted, factor)
    if draft > 1:
        weights = _through_reduce(weights, in_size, draft)
    first, count = keep
    return weights[first:first + count].astype(np.float32)


def draft_scale(height: int, width: int, spec: Preprocess) -> int:
    """The scale Pillow's ``draft`` (worker/decoders/guards.py) has libjpeg decode a JPEG at on
    the CPU: the largest of 8, 4, 2 that leaves it at least the model's size."""
    side_h, side_w = spec.draft_size
    scale = min(width // side_w, height // side_h)
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def plan(height: int, width: int, spec: Preprocess, draft: bool = False
         ) -> tuple[np.ndarray, np.ndarray]:
    """The row and column matrices that take an image of (height, width) to the model's size:
    squashed to (height, width), or its short side scaled then centre-cropped. ``draft``: as
    the CPU path decodes a JPEG (TAGGER_JPEG_DRAFT), so both give the model the same pixels."""
    scale = draft_scale(height, width, spec) if draft else 1
    stored = (-(-height // scale), -(-width // scale))
    if spec.shortest_edge is None:
        size = (spec.height, spec.width)
    else:
        ratio = spec.shortest_edge / min(stored)
        size = (max(1, round(stored[0] * ratio)), max(1, round(stored[1] * ratio)))
    top, left = (size[0] - spec.height) // 2, (size[1] - spec.width) // 2
    return (axis_weights(height, size[0], (top, spec.height), scale),
            axis_weights(width, size[1], (left, spec.width), scale))


def resize_batch(images: Sequence[torch.Tensor], spec: Preprocess, dtype: torch.dtype,
                 draft: bool = False) -> torch.Tensor:
    """(C, H, W) uint8 images of any sizes (C 1 or 3; views are fine) -> (N, 3, h, w) uint8.

    One canvas, two batched products: the columns first, then the rows, as Pillow does.
    """
    import torch

    device = images[0].device
    tall = max(int(i.shape[1]) for i in images)
    wide = max(int(i.shape[2]) for i in images)
    canvas = torch.zeros((len(images), 3, tall, wide), dtype=dtype, device=device)
    rows = np.zeros((len(images), spec.height, tall), np.float32)
    cols = np.zeros((len(images), wide, spec.width), np.float32)
    for n, image in enumerate(images):
        height, width = int(image.shape[1]), int(image.shape[2])
        canvas[n, :, :height, :width] = image  # gray (1, H, W) is broadcast to three channels
        row, col = plan(height, width, spec, draft)
        rows[n, :, :height], cols[n, :width] = row, col.T
    weights = torch.from_numpy(np.concatenate([rows.reshape(-1), cols.reshape(-1)]))
    weights = weights.to(device=device, dtype=dtype, non_blocking=True)
    row_w = weights[:rows.size].view(rows.shape)[:, None]
    col_w = weights[rows.size:].view(cols.shape)[:, None]
    across = torch.matmul(canvas, col_w)  # (N, 3, H, w)
    out = torch.matmul(row_w, across)  # (N, 3, h, w)
    return out.float().round_().clamp_(0, 255).to(torch.uint8)


def buckets(sizes: Sequence[tuple[int, int]], slack: float = 1.5) -> list[list[int]]:
    """Indices of ``sizes`` (height, width) in groups that share a canvas: by size, each group's
    canvas at most ``slack`` times the pixels it holds (a panorama gets a canvas of its own)."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    groups: list[list[int]] = []
    tall = wide = area = 0
    for index in order:
        height, width = sizes[index]
        grown = (max(tall, height), max(wide, width))
        if groups and grown[0] * grown[1] * (len(groups[-1]) + 1) <= slack * (
                area + height * width):
            groups[-1].append(index)
            tall, wide = grown
            area += height * width
        else:
            groups.append([index])
            tall, wide, area = height, width, height * width
    return groups
