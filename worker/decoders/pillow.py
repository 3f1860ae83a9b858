"""The CPU decoder: Pillow, in the decode processes (worker/prep), to model-sized RGB arrays.

The header guards run first (guards.py); the decode itself runs under the image's deadline and
memory cap, which the decode process enforces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from worker.core.errors import ItemError, Reason
from worker.core.pixels import Pixels, Preprocess
from worker.core.settings import Settings
from worker.decoders import Limits
from worker.decoders.guards import open_checked
from worker.decoders.modes import RESIZE_FIRST, to_rgb

# Shrink by an integer box reduction first while the remaining bicubic step is at least this
# large: several times faster on multi-megapixel sources, indistinguishable at the model's size.
REDUCING_GAP = 3.0


def decode_image(data: bytes, spec: Preprocess, limits: Limits) -> np.ndarray:
    """Decode ``data`` into an (height, width, 3) uint8 array, or raise ItemError."""
    image = open_checked(data, limits, spec.draft_size)
    with image:
        try:
            image = ImageOps.exif_transpose(image)
            if image.mode in RESIZE_FIRST:
                # Resize at the source's channel count, then compose: a 5K RGBA photo is
                # composed onto white at 224x224 instead of at full size (same result: Pillow
                # resizes with premultiplied alpha, and composing is linear).
                return np.asarray(to_rgb(resize(image, spec)))
            return np.asarray(resize(to_rgb(image), spec))
        except MemoryError as exc:
            raise ItemError(Reason.TOO_MUCH_MEMORY,
                            f"{image.format} image needs more than the "
                            f"{limits.max_memory // 2**20} MiB allowed to decode it") from exc
        except Exception as exc:  # Pillow raises many types for damaged data; all are per-item.
            raise ItemError(Reason.UNDECODABLE,
                            f"{image.format} image: {type(exc).__name__}: {exc}") from exc


def resize(image: Image.Image, spec: Preprocess) -> Image.Image:
    """Resize as the processor does: squash to (height, width), or short side then centre crop."""
    if spec.shortest_edge is None:
        return image.resize((spec.width, spec.height), resample=spec.resample,
                            reducing_gap=REDUCING_GAP)
    width, height = image.size
    scale = spec.shortest_edge / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, resample=spec.resample, reducing_gap=REDUCING_GAP)
    left = (size[0] - spec.width) // 2
    top = (size[1] - spec.height) // 2
    return image.crop((left, top, left + spec.width, top + spec.height))


class PillowDecoder:
    """Everything happens in ``prepare`` (in a decode process); ``finish`` passes pixels on."""

    name = "pillow"
    prepare = staticmethod(decode_image)

    @classmethod
    def preferred_on(cls, device: str) -> bool:
        return device == "cpu"

    def __init__(self, settings: Settings, device: str = "cpu") -> None:
        self.device = device

    def finish(self, prepared: Sequence[Any], spec: Preprocess) -> list[Pixels | ItemError]:
        return list(prepared)

    def close(self) -> None:
        pass
