"""The GPU decoder: baseline JPEGs batch-decoded by nvJPEG in GPU memory, resized there in groups.

``prepare`` (in a decode process) reads the header with the same guards as Pillow and hands a
baseline RGB/gray JPEG on as its bytes; everything else (PNG, WebP, progressive or CMYK JPEGs)
is decoded there by Pillow. ``finish`` (in the model's process) decodes the batch's JPEGs in one
nvJPEG call, applies EXIF orientations, resizes images of one size in one call, and uploads the
Pillow-decoded ones as one pinned batch. Progressive JPEGs stay on the CPU: their decode time
grows with the number of scans, and only a decode process can be stopped at the deadline.
A JPEG nvJPEG refuses goes back to a decode process for Pillow (``OnCpu``).
This module imports torch only inside ``finish``: decode processes never load it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.core.errors import ConfigError, ItemError
from worker.core.pixels import Pixels, Preprocess
from worker.core.settings import Settings
from worker.decoders import Limits, OnCpu
from worker.decoders.guards import describe, open_checked
from worker.decoders.pillow import decode_image

if TYPE_CHECKING:
    import torch

DecodeJpeg = Callable[..., Any]  # torchvision.io.decode_jpeg's shape
GPU_MODES = frozenset({"RGB", "L"})


@dataclass(frozen=True)
class Jpeg:
    """A baseline JPEG for nvJPEG: its bytes (writable, so torch can wrap them without a
    copy) and its EXIF orientation."""

    data: bytearray
    orientation: int


def torchvision_decode_jpeg() -> DecodeJpeg:
    try:
        from torchvision.io import decode_jpeg
    except (ImportError, OSError, RuntimeError) as exc:
        raise ConfigError("TAGGER_DECODER=nvjpeg needs torchvision built for this torch: pip "
                          "install 'catalog-tagger[gpu]' (torchvision pinned to torch)") from exc
    return decode_jpeg  # type: ignore[no-any-return]


def prepare(data: bytes, spec: Preprocess, limits: Limits) -> Jpeg | np.ndarray:
    """A JPEG nvJPEG takes as it is; anything else decoded here by Pillow."""
    with open_checked(data, limits) as image:
        progressive = bool(image.info.get("progressive") or image.info.get("progression"))
        if image.format == "JPEG" and image.mode in GPU_MODES and not progressive:
            return Jpeg(bytearray(data), describe(image).orientation)
    return decode_image(data, spec, limits)


class NvJpegDecoder:
    """Baseline JPEGs on the GPU in one batched call per batch; the rest decoded by Pillow."""

    name = "nvjpeg"
    prepare = staticmethod(prepare)

    @classmethod
    def preferred_on(cls, device: str) -> bool:
        if not device.startswith("cuda"):
            return False
        try:
            torchvision_decode_jpeg()
        except ConfigError:
            return False
        return True

    def __init__(self, settings: Settings, device: str,
                 decode_jpeg: DecodeJpeg | None = None) -> None:
        import torch

        self.device = torch.device(device)
        self.decode_jpeg = decode_jpeg or torchvision_decode_jpeg()
        on_gpu = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if on_gpu else None  # uploads beside work

    def finish(self, prepared: Sequence[Any], spec: Preprocess
               ) -> list[Pixels | ItemError | OnCpu]:
        out: list[Any] = list(prepared)
        jpegs = [i for i, p in enumerate(prepared) if isinstance(p, Jpeg)]
        arrays = [i for i, p in enumerate(prepared) if isinstance(p, np.ndarray)]
        decoded = self._decode_batch([prepared[i].data for i in jpegs])
        oriented = {i: orient(image, prepared[i].orientation)
                    for i, image in zip(jpegs, decoded, strict=True) if image is not None}
        for i, image in zip(jpegs, decoded, strict=True):
            if image is None:  # nvJPEG refused it: Pillow will say what is wrong with it
                out[i] = OnCpu(bytes(prepared[i].data))
        for i, resized in resize_all(oriented, spec).items():
            out[i] = resized
        for i, tensor in zip(arrays, self._upload([prepared[i] for i in arrays]), strict=True):
            out[i] = tensor
        return out

    def _decode_batch(self, blobs: Sequence[bytearray]) -> list[torch.Tensor | None]:
        """One batched nvJPEG call; if it fails (it returns nothing then), one by one."""
        import torch

        if not blobs:
            return []
        data = [torch.frombuffer(blob, dtype=torch.uint8) for blob in blobs]
        try:
            return list(self.decode_jpeg(data, mode="RGB", device=self.device))
        except RuntimeError:
            return [self._decode_one(tensor) for tensor in data]

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return self.decode_jpeg([data], mode="RGB", device=self.device)[0]  # type: ignore
        except RuntimeError:
            return None

    def _upload(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Pillow-decoded images as one pinned batch, copied on a side stream."""
        import torch

        if not arrays:
            return []
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        if self.stream is None:
            return list(batch.to(self.device))
        pinned = batch.contiguous().pin_memory()
        with torch.cuda.stream(self.stream):
            on_device = pinned.to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        on_device.record_stream(torch.cuda.current_stream(self.device))
        return list(on_device)

    def close(self) -> None:
        pass


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (C, H, W) image, as ImageOps.exif_transpose does."""
    if orientation in (5, 6, 7, 8):  # the transposing ones: rotate 90 degrees
        image = image.transpose(1, 2)
    flips = {2: [2], 3: [1, 2], 4: [1], 5: [], 6: [2], 7: [1, 2], 8: [1]}.get(orientation, [])
    return image.flip(flips) if flips else image


def resize_all(images: dict[int, torch.Tensor], spec: Preprocess) -> dict[int, torch.Tensor]:
    """Resize each group of images of one size in one call (a catalogue's photos mostly
    share a few sizes): fewer kernel launches than one resize per image."""
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in images.items():
        groups.setdefault(tuple(image.shape), []).append(index)
    out: dict[int, torch.Tensor] = {}
    for indices in groups.values():
        batch = torch.stack([images[i] for i in indices])
        out.update(zip(indices, resize(batch, spec), strict=True))
    return out


def resize(images: torch.Tensor, spec: Preprocess) -> torch.Tensor:
    """(N, C, H, W) or (C, H, W) uint8 -> (N, 3, h, w) / (3, h, w) uint8 at the model's size:
    antialiased bicubic, as Pillow; short side then centre crop for shortest_edge checkpoints."""
    import torch
    import torch.nn.functional as F

    single = images.dim() == 3
    batch = images[None] if single else images
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    height, width = batch.shape[2:]
    if spec.shortest_edge is None:
        size = (spec.height, spec.width)
    else:
        scale = spec.shortest_edge / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(batch.float(), size=size, mode="bicubic", antialias=True,
                            align_corners=False)
    if spec.shortest_edge is not None:
        top, left = (size[0] - spec.height) // 2, (size[1] - spec.width) // 2
        resized = resized[:, :, top:top + spec.height, left:left + spec.width]
    out = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out[0] if single else out
