"""Image bytes to model-sized pixels: the Decoder interface, its registry, and ``auto``.

A decoder works in two steps: ``prepare`` runs in a decode process (worker/prep), right after
the fetch, on one image's bytes; ``finish`` runs in the model's process on a batch of prepared
images (nothing to do for Pillow; the GPU decode for nvJPEG). A new decoder is one module with a
class shaped like ``Decoder`` and one line in ``DECODERS``: a ``DecoderPart`` that declares the
formats and file suffixes it reads, which listings, header guards and report previews then take
too. Pixels are whatever the backends take (``worker.core.pixels``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from worker.core.errors import ItemError
from worker.core.pixels import Pixels, Preprocess
from worker.core.registry import Part, Registry

if TYPE_CHECKING:
    from worker.core.settings import Settings


@dataclass(frozen=True)
class OnCpu:
    """What ``finish`` hands back for an image it cannot take after all: decode it with Pillow
    in a decode process (under the same deadline and memory cap) instead."""

    data: bytes


class Decoder(Protocol):
    """Decodes images in two steps; one bad image is an ItemError in its place, never a raise."""

    name: str

    def __init__(self, settings: Settings, device: str) -> None: ...

    @classmethod
    def preferred_on(cls, device: str) -> bool:
        """Whether ``TAGGER_DECODER=auto`` should take this decoder on ``device``."""
        ...

    @staticmethod
    def prepare(data: bytes, spec: Preprocess, limits: Limits) -> Any:
        """In a decode process: one image's bytes to what ``finish`` takes (or ItemError).

        Runs under the image's deadline and memory cap; must not touch a GPU.
        """
        ...

    def finish(self, prepared: Sequence[Any], spec: Preprocess) -> list[Pixels | ItemError | OnCpu]:
        """In the model's process: a batch of prepared images to pixels."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DecoderPart(Part):
    """A decoder's registration, with what it reads (before its module is imported)."""

    formats: tuple[str, ...] = ()  # Pillow's format names: the header guards open these
    suffixes: tuple[str, ...] = ()  # names a listing takes as images (".avif")
    opener: str = ""  # a module whose import registers its formats with Pillow (register_open)
    fallback: str = ""  # the decoder that takes what ``finish`` hands back (``OnCpu``)


_PILLOW_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
DECODERS: Registry[type[Decoder]] = Registry("decoder", {
    "pillow": DecoderPart("worker.decoders.pillow:PillowDecoder",
                          formats=("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"),
                          suffixes=_PILLOW_SUFFIXES),
    "nvjpeg": DecoderPart("worker.decoders.nvjpeg:NvJpegDecoder", formats=("JPEG",),
                          suffixes=(".jpg", ".jpeg"), fallback="pillow"),
}, kind=DecoderPart)
FALLBACK = "pillow"  # runs everywhere: what ``auto`` takes when no other decoder prefers a device


def declared(what: str) -> tuple[str, ...]:
    """What the registered decoders declare, all together: ``formats``, ``suffixes`` or
    ``opener`` (the modules to import before opening)."""
    return DECODERS.declared(what)


def image_suffixes() -> tuple[str, ...]:
    """File name suffixes some registered decoder reads: what listings take as images."""
    return declared("suffixes")


def fallback_of(name: str) -> str:
    """The decoder that takes the images ``name``'s ``finish`` hands back."""
    return getattr(DECODERS.part(name), "fallback", "") or FALLBACK


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


def decoder_name(requested: str, device: str) -> str:
    """TAGGER_DECODER, or for ``auto`` the first registered decoder that prefers ``device``."""
    if requested != "auto":
        return requested
    for name in DECODERS:
        if name != FALLBACK and DECODERS.get(name).preferred_on(device):
            return name
    return FALLBACK
