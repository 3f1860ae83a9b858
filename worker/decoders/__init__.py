"""Image bytes to model-sized pixels: the Decoder interface, and the one TAGGER_DECODER picks.

A new decoder is one module with a class that has ``decode`` and ``close``, and a line in
``DECODERS``. Pixels are whatever the backend takes: an (H, W, 3) uint8 NumPy array from the CPU
decoders, a (3, H, W) uint8 tensor in GPU memory from nvJPEG.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker.core.errors import ItemError
from worker.core.settings import Settings

Pixels = Any  # numpy.ndarray or torch.Tensor: decoders and backends agree, the pipeline passes
DECODERS = {"pillow": "worker.decoders.pillow:PillowDecoder",
            "nvjpeg": "worker.decoders.nvjpeg:NvJpegDecoder"}
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, without importing Pillow here


@dataclass(frozen=True)
class Preprocess:
    """How the checkpoint's image processor sizes and normalises its input (from its config)."""

    height: int
    width: int
    resample: int = BICUBIC
    shortest_edge: int | None = None  # resize the short side to this, then centre-crop
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def draft_size(self) -> tuple[int, int]:
        side = self.shortest_edge or max(self.height, self.width)
        return side, side


@dataclass(frozen=True)
class Limits:
    """What one image may cost before it is refused (TAGGER_MAX_IMAGE_*, TAGGER_ITEM_TIMEOUT)."""

    max_pixels: int
    max_memory: int
    seconds: float
    jpeg_draft: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(max_pixels=settings.max_image_pixels, max_memory=settings.max_image_memory,
                   seconds=settings.item_timeout, jpeg_draft=settings.jpeg_draft)


class Decoder(Protocol):
    """Decodes a batch of images; one bad image is an ItemError in its place, never a raise."""

    name: str

    def decode(self, blobs: Sequence[bytes], spec: Preprocess) -> list[Pixels | ItemError]: ...

    def close(self) -> None: ...


def make_decoder(settings: Settings, device: str) -> Decoder:
    """TAGGER_DECODER, or for ``auto``: nvJPEG on a CUDA device where torchvision has it."""
    name = settings.decoder
    if name == "auto":
        name = "nvjpeg" if device.startswith("cuda") and _has_nvjpeg() else "pillow"
    module, _, cls = DECODERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(settings, device)  # type: ignore


def _has_nvjpeg() -> bool:
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        return False
    return True
