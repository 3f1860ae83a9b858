"""The GPU decoder: baseline JPEGs batch-decoded by nvJPEG in GPU memory, resized there in batches.

``prepare`` (in a decode process) reads the header with the same guards as Pillow and hands a
baseline RGB/gray JPEG on as its bytes; everything else (PNG, WebP, progressive or CMYK JPEGs)
is decoded there by Pillow. ``finish`` (in the model's process) takes the batch's JPEGs in
parts that fit ``BUDGET`` of GPU memory, decodes each part in one nvJPEG call on the decoder's
own stream (drained first: worker/decoders/streams.py), applies EXIF orientations, resizes
images of any sizes in a few batched calls (worker/decoders/resample.py, Pillow's filter and
the CPU path's draft scale), and uploads the Pillow-decoded ones as one pinned batch.
A call that fails (out of memory, a JPEG nvJPEG refuses, a resize the device cannot do) is
tried again in halves; an image that fails alone goes back to a decode process for Pillow
(``OnCpu``). Progressive JPEGs stay on the CPU: their decode time grows with the number of
scans, and only a decode process can be stopped at the deadline.
This module imports torch only inside the decoder: decode processes never load it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.core.errors import ConfigError, ItemError
from worker.core.halves import in_halves
from worker.core.pixels import Pixels, Preprocess
from worker.core.settings import Settings
from worker.decoders import Limits, OnCpu
from worker.decoders.guards import describe, open_checked
from worker.decoders.pillow import decode_image
from worker.decoders.resample import buckets, resize_batch
from worker.decoders.streams import Streams

if TYPE_CHECKING:
    import torch

DecodeJpeg = Callable[..., Any]  # torchvision.io.decode_jpeg's shape
GPU_MODES = frozenset({"RGB", "L"})
# GPU memory one part of a batch may take: its decoded pixels and their resize canvas (a 24 MP
# photo takes ~290 MB, a 1,200 px one ~13 MB); a part that runs out anyway is halved.
BUDGET = 2**30


@dataclass(frozen=True)
class Jpeg:
    """A baseline JPEG for nvJPEG: its bytes (writable, so torch can wrap them without a
    copy), its EXIF orientation and its stored size."""

    data: bytearray
    orientation: int
    height: int
    width: int

    @property
    def cost(self) -> int:
        """GPU bytes while it is finished: decoded (1 byte a value), then its canvas (2 or 4)."""
        return self.height * self.width * 3 * 5


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
            header = describe(image)
            return Jpeg(bytearray(data), header.orientation, header.height, header.width)
    return decode_image(data, spec, limits)


class NvJpegDecoder:
    """Baseline JPEGs on the GPU in batched calls per part of a batch; the rest by Pillow."""

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

    def __init__(self, settings: Settings, device: str, decode_jpeg: DecodeJpeg | None = None,
                 streams: Streams | None = None) -> None:
        """``decode_jpeg``, ``streams``: stand-ins for torchvision's and CUDA's (tests)."""
        import torch

        self.device = torch.device(device)
        self.decode_jpeg = decode_jpeg or torchvision_decode_jpeg()
        self.streams = streams or Streams(self.device)
        on_gpu = self.device.type == "cuda"
        self.dtype = torch.float16 if on_gpu else torch.float32  # 0..255 are exact in both
        self.draft = settings.jpeg_draft  # as the CPU path decodes: the same pixels
        self.budget = BUDGET
        self.upload_stream = torch.cuda.Stream(self.device) if on_gpu else None
        # Chunk threads (-P threads -c N) share the decoder's stream: one part at a time, or
        # one thread's queued work could free a block that the other's decode is handed.
        self.lock = threading.Lock()

    def finish(self, prepared: Sequence[Any], spec: Preprocess
               ) -> list[Pixels | ItemError | OnCpu]:
        out: list[Any] = list(prepared)
        for part in parts([i for i, p in enumerate(prepared) if isinstance(p, Jpeg)],
                          prepared, self.budget):
            for i, pixels in zip(part, self._finish_part([prepared[i] for i in part], spec),
                                 strict=True):
                out[i] = pixels
        arrays = [i for i, p in enumerate(prepared) if isinstance(p, np.ndarray)]
        for i, tensor in zip(arrays, self._upload([prepared[i] for i in arrays]), strict=True):
            out[i] = tensor
        return out

    def _finish_part(self, jpegs: list[Jpeg], spec: Preprocess) -> list[torch.Tensor | OnCpu]:
        """Decode, orient and resize one part on the decoder's stream; what fails alone, OnCpu."""
        with self.lock:
            with self.streams.work():
                out = self._decode_and_resize(jpegs, spec)
            self.streams.hand_over([r for r in out if r is not None and not _is_failure(r)])
        return [OnCpu(bytes(jpeg.data)) if r is None or _is_failure(r) else r
                for r, jpeg in zip(out, jpegs, strict=True)]

    def _decode_and_resize(self, jpegs: list[Jpeg], spec: Preprocess) -> list[Any]:
        """Each image resized, its failure, or None where its decode failed."""
        decoded = in_halves(jpegs, self._decode, _failed_call, self.streams.release)
        images = {n: orient(image, jpegs[n].orientation) for n, image in enumerate(decoded)
                  if not isinstance(image, BaseException)}
        del decoded
        resized: dict[int, Any] = {}
        order = list(images)
        for bucket in buckets([tuple(images[n].shape[1:]) for n in order]):
            members = [order[b] for b in bucket]
            done = in_halves([images[n] for n in members], self._resize(spec), _failed_call,
                             self.streams.release)
            resized.update(zip(members, done, strict=True))
        return [resized.get(n) for n in range(len(jpegs))]

    def _decode(self, jpegs: Sequence[Jpeg]) -> list[torch.Tensor]:
        """One batched nvJPEG call, once the stream it writes on is idle."""
        import torch

        data = [torch.frombuffer(jpeg.data, dtype=torch.uint8) for jpeg in jpegs]
        self.streams.drain()
        return list(self.decode_jpeg(data, mode="RGB", device=self.device))

    def _resize(self, spec: Preprocess) -> Any:
        def run(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            return list(resize_batch(images, spec, self.dtype, self.draft))
        return run

    def _upload(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Pillow-decoded images as one pinned batch, copied on a side stream."""
        import torch

        if not arrays:
            return []
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        if self.upload_stream is None:
            return list(batch.to(self.device))
        pinned = batch.contiguous().pin_memory()
        with torch.cuda.stream(self.upload_stream):
            on_device = pinned.to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).wait_stream(self.upload_stream)
        on_device.record_stream(torch.cuda.current_stream(self.device))
        return list(on_device)

    def close(self) -> None:
        pass


def _failed_call(exc: BaseException) -> bool:
    """What a smaller call may not meet: out of memory (torch.OutOfMemoryError is one), a JPEG
    nvJPEG refuses, a resize the device cannot do. Each image that fails alone goes to Pillow."""
    return isinstance(exc, RuntimeError)


def _is_failure(result: object) -> bool:
    return isinstance(result, BaseException)


def parts(indices: list[int], prepared: Sequence[Any], budget: int) -> list[list[int]]:
    """``indices`` in runs whose JPEGs cost at most ``budget`` together (one at least)."""
    out: list[list[int]] = []
    used = budget
    for index in indices:
        cost = prepared[index].cost
        if used + cost > budget:
            out.append([])
            used = 0
        out[-1].append(index)
        used += cost
    return out


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (C, H, W) image, as ImageOps.exif_transpose does."""
    if orientation in (5, 6, 7, 8):  # the transposing ones: rotate 90 degrees
        image = image.transpose(1, 2)
    flips = {2: [2], 3: [1, 2], 4: [1], 5: [], 6: [2], 7: [1, 2], 8: [1]}.get(orientation, [])
    return image.flip(flips) if flips else image
