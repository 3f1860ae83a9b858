"""The parts alone: the image tower, the GPU decoder, GPU-vs-CPU agreement, the race probe."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from worker.backends.torch_clip import TorchBackend
from worker.core.labels import LabelSet
from worker.core.pixels import Preprocess
from worker.decoders import Limits, OnCpu
from worker.decoders.nvjpeg import NvJpegDecoder
from worker.decoders.pillow import decode_image

SLEEP_CYCLES = 200_000_000  # ~100 ms of GPU clock: the queued work the probe frees memory under


def pillow_decode_jpeg(data: Sequence[torch.Tensor], mode: str = "RGB",
                       device: Any = "cpu") -> list[torch.Tensor]:
    """torchvision's decode_jpeg contract, by Pillow, for a CPU run where torchvision does not
    import beside this torch: the decoder's own logic still runs whole."""
    out = []
    for blob in data:
        with Image.open(io.BytesIO(blob.numpy().tobytes())) as image:
            array = np.asarray(image.convert(mode))
        out.append(torch.from_numpy(array.copy()).permute(2, 0, 1).to(device))
    return out


def jpeg_decoder() -> tuple[Any, str]:
    """torchvision's decode_jpeg where it imports, else the Pillow stand-in; and which."""
    try:
        import torchvision
        from torchvision.io import decode_jpeg
    except (ImportError, OSError, RuntimeError) as exc:
        return pillow_decode_jpeg, f"Pillow stand-in for decode_jpeg ({type(exc).__name__})"
    return decode_jpeg, f"torchvision {torchvision.__version__} decode_jpeg"


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tower(backend: TorchBackend, seconds: float) -> dict[str, Any]:
    """Images/s of the image tower alone at its batch, on uint8 pixels already on the device."""
    spec, size = backend.preprocess, backend.batch_size
    batch = list(torch.randint(0, 256, (size, 3, spec.height, spec.width), dtype=torch.uint8,
                               device=backend.torch_device))
    backend.encode_images(batch)  # allocations, kernel choice
    passes, started = 0, time.perf_counter()
    while passes < 2 or time.perf_counter() - started < seconds:
        backend.encode_images(batch)  # ends in a copy to the host: synchronised
        passes += 1
    elapsed = time.perf_counter() - started
    return {"images_per_second": round(passes * size / elapsed, 1), "batch": size,
            "precision": backend.precision, "passes": passes}


def finish_all(decoder: NvJpegDecoder, prepared: list[Any], spec: Preprocess, batch: int
               ) -> tuple[list[Any], int]:
    """Every prepared image through ``finish`` in batches; and how many went back to Pillow."""
    out: list[Any] = []
    for start in range(0, len(prepared), batch):
        out += decoder.finish(prepared[start:start + batch], spec)
    synchronise(decoder.device)
    return out, sum(isinstance(o, OnCpu) for o in out)


def decode(decoder: NvJpegDecoder, blobs: list[bytes], spec: Preprocess, limits: Limits,
           batch: int) -> dict[str, Any]:
    """nvJPEG decode + resize alone: images/s over ``blobs``, and the share sent to Pillow."""
    prepared = [decoder.prepare(blob, spec, limits) for blob in blobs]  # decode processes' part
    on_cpu = sum(isinstance(p, np.ndarray) for p in prepared)
    finish_all(decoder, prepared[:batch], spec, batch)  # warm: nvJPEG's state, allocations
    started = time.perf_counter()
    _, back = finish_all(decoder, prepared, spec, batch)
    elapsed = time.perf_counter() - started
    return {"images_per_second": round(len(blobs) / elapsed, 1), "images": len(blobs),
            "batch": batch, "pillow_share": round((on_cpu + back) / len(blobs), 4),
            "refused_by_nvjpeg": back}


def agreement(cpu: TorchBackend, gpu: TorchBackend, decoder: NvJpegDecoder, blobs: list[bytes],
              labelset: LabelSet, limits: Limits) -> dict[str, Any]:
    """The GPU path (nvJPEG, the GPU backend) against the CPU path (Pillow with its draft
    scale, torch float32 on the CPU) on the same photos: embeddings' cosine, top-1 label."""
    spec = gpu.preprocess
    rows_cpu = encode(cpu, [decode_image(blob, spec, limits) for blob in blobs])
    pixels, back = finish_all(decoder, [decoder.prepare(b, spec, limits) for b in blobs], spec,
                              gpu.batch_size)
    if back:
        raise RuntimeError(f"{back} probe photos went back to Pillow: nvJPEG refused them")
    rows_gpu = encode(gpu, pixels)
    cosine = (rows_cpu * rows_gpu).sum(axis=1)
    texts = gpu.encode_texts(labelset.prompts())
    top_cpu, top_gpu = (rows_cpu @ texts.T).argmax(1), (rows_gpu @ texts.T).argmax(1)
    return {"photos": len(blobs), "mean_cosine": round(float(cosine.mean()), 5),
            "min_cosine": round(float(cosine.min()), 5),
            "top1_agreement": round(float((top_cpu == top_gpu).mean()), 4),
            "labels": len(labelset.labels), "cpu_path": cpu.description,
            "gpu_path": f"{decoder.name} + {gpu.description}"}


def encode(backend: TorchBackend, pixels: list[Any]) -> np.ndarray:
    size = backend.batch_size
    return np.concatenate([backend.encode_images(pixels[i:i + size])
                           for i in range(0, len(pixels), size)])


def corruption(decoder: NvJpegDecoder, blob: bytes, spec: Preprocess, limits: Limits,
               iterations: int, guarded: bool) -> dict[str, Any]:
    """pytorch/vision PR 9606's pattern: fill tensors, queue ~100 ms of work and one reduction
    per tensor, free them while the reductions wait, decode; count wrong reductions.
    ``guarded``: through this decoder; else torchvision's decode_jpeg on the caller's stream."""
    device = decoder.device
    jpeg = decoder.prepare(blob, spec, limits)
    elements = jpeg.height * jpeg.width * 3 // 4  # float32 blocks the size of a decoded image
    corrupted = 0
    for _ in range(iterations):
        tensors = [torch.full((elements,), float(k + 1), device=device) for k in range(8)]
        torch.cuda.synchronize(device)
        torch.cuda._sleep(SLEEP_CYCLES)
        sums = [t.sum() for t in tensors]
        del tensors  # freed while the reductions are still queued
        if guarded:
            decoder.finish([jpeg], spec)
        else:
            decoder.decode_jpeg([torch.frombuffer(jpeg.data, dtype=torch.uint8)], mode="RGB",
                                device=device)
        torch.cuda.synchronize(device)
        corrupted += any(float(s) != (k + 1) * elements for k, s in enumerate(sums))
    return {"iterations": iterations, "corrupted": corrupted}
