"""The GPU decoder: baseline JPEGs batch-decoded by nvJPEG into GPU memory and resized there.

Everything else (PNG, WebP, progressive or CMYK JPEGs, anything nvJPEG refuses) goes through
the Pillow decoder, item by item, so one odd image never fails the batch. The same header
guards run first: byte cap (at fetch), pixel cap and memory estimate, format allow-list.
Progressive JPEGs stay on the CPU: their decode time grows with the number of scans, and only
the Pillow decoder's processes can be stopped at the item deadline.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from worker.core.errors import ConfigError, ItemError
from worker.core.pixels import Pixels, Preprocess
from worker.core.settings import Settings
from worker.decoders import Limits
from worker.decoders.guards import describe, open_checked
from worker.decoders.pillow import PillowDecoder

DecodeJpeg = Callable[..., Any]  # torchvision.io.decode_jpeg's shape
GPU_MODES = frozenset({"RGB", "L"})


def torchvision_decode_jpeg() -> DecodeJpeg:
    try:
        from torchvision.io import decode_jpeg
    except (ImportError, OSError, RuntimeError) as exc:
        raise ConfigError("TAGGER_DECODER=nvjpeg needs torchvision built for this torch: pip "
                          "install 'catalog-tagger[gpu]' (torchvision pinned to torch)") from exc
    return decode_jpeg  # type: ignore[no-any-return]


class NvJpegDecoder:
    """Baseline JPEGs on the GPU in one batched call; the rest through PillowDecoder."""

    name = "nvjpeg"

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
        self.device = torch.device(device)
        self.limits = Limits.from_settings(settings)
        self.fallback = PillowDecoder(settings)
        self.decode_jpeg = decode_jpeg or torchvision_decode_jpeg()
        # Headers are read in this process: Pillow warns between its limit and twice that,
        # where open_checked refuses with a reason instead (the Pillow processes do the same).
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    def decode(self, blobs: Sequence[bytes], spec: Preprocess) -> list[Pixels | ItemError]:
        out: list[Pixels | ItemError | None] = [None] * len(blobs)
        on_gpu: dict[int, int] = {}  # index -> EXIF orientation
        for index, blob in enumerate(blobs):
            try:
                orientation = self._gpu_orientation(blob)
            except ItemError as exc:
                out[index] = exc
                continue
            if orientation:
                on_gpu[index] = orientation
        decoded = self._decode_batch([blobs[i] for i in on_gpu])
        for (index, orientation), image in zip(on_gpu.items(), decoded, strict=True):
            if image is not None:
                out[index] = resize(orient(image, orientation), spec)
        on_cpu = [i for i, value in enumerate(out) if value is None]
        for index, result in zip(on_cpu, self.fallback.decode([blobs[i] for i in on_cpu], spec),
                                 strict=True):
            out[index] = result if isinstance(result, ItemError) else self._to_device(result)
        return out  # type: ignore[return-value]

    def _gpu_orientation(self, blob: bytes) -> int:
        """The EXIF orientation (1-8) if nvJPEG should take this image, else 0 (Pillow's)."""
        with open_checked(blob, self.limits) as image:
            progressive = bool(image.info.get("progressive") or image.info.get("progression"))
            if image.format != "JPEG" or image.mode not in GPU_MODES or progressive:
                return 0
            return describe(image).orientation

    def _decode_batch(self, blobs: Sequence[bytes]) -> list[torch.Tensor | None]:
        """One batched nvJPEG call; if it fails (it returns nothing then), one by one."""
        if not blobs:
            return []
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        try:
            return list(self.decode_jpeg(data, mode="RGB", device=self.device))
        except RuntimeError:
            return [self._decode_one(tensor) for tensor in data]

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return self.decode_jpeg([data], mode="RGB", device=self.device)[0]  # type: ignore
        except RuntimeError:  # the Pillow decoder will say what is wrong with it
            return None

    def _to_device(self, pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).to(
            self.device, non_blocking=True)

    def close(self) -> None:
        self.fallback.close()


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (C, H, W) image, as ImageOps.exif_transpose does."""
    if orientation in (5, 6, 7, 8):  # the transposing ones: rotate 90 degrees
        image = image.transpose(1, 2)
    flips = {2: [2], 3: [1, 2], 4: [1], 5: [], 6: [2], 7: [1, 2], 8: [1]}.get(orientation, [])
    return image.flip(flips) if flips else image


def resize(image: torch.Tensor, spec: Preprocess) -> torch.Tensor:
    """(C, H, W) uint8 -> (3, h, w) uint8 at the model's size: antialiased bicubic, as Pillow."""
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    height, width = image.shape[1:]
    if spec.shortest_edge is None:
        size = (spec.height, spec.width)
    else:
        scale = spec.shortest_edge / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(image[None].float(), size=size, mode="bicubic", antialias=True,
                            align_corners=False)[0]
    if spec.shortest_edge is not None:
        top, left = (size[0] - spec.height) // 2, (size[1] - spec.width) // 2
        resized = resized[:, top:top + spec.height, left:left + spec.width]
    return resized.round_().clamp_(0, 255).to(torch.uint8)
