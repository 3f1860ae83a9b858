"""Single-stage measurements: the seed-style loop, a backend's image tower, a decoder, accuracy."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from testkit.corpus import Image
from worker.backends import Backend
from worker.core.pixels import Pixels, Preprocess
from worker.decoders import Decoder
from worker.prep.pool import PrepPool


def seed_loop(checkpoint: Path, images: Sequence[Image], labels: Sequence[str]) -> float:
    """What users run today: per image open, processor(images, text), model(**inputs), fp32.

    The model is loaded once and one warm-up image is left out of the timing.
    """
    import torch
    from PIL import Image as PILImage
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    model = ChineseCLIPModel.from_pretrained(checkpoint).eval()
    processor = ChineseCLIPProcessor.from_pretrained(checkpoint)

    def tag(image: Image) -> list[tuple[str, float]]:
        picture = PILImage.open(io.BytesIO(image.data))
        inputs = processor(images=picture, text=list(labels), return_tensors="pt", padding=True)
        with torch.no_grad():
            probs = model(**inputs).logits_per_image.softmax(dim=-1)[0]
        values, indices = probs.topk(min(5, len(labels)))
        return [(labels[i], float(v)) for i, v in zip(indices, values, strict=True)]

    tag(images[0])
    started = time.perf_counter()
    for image in images:
        tag(image)
    return len(images) / (time.perf_counter() - started)


def tower(backend: Backend, seconds: float = 10.0, min_batches: int = 3) -> float:
    """The backend's image side alone on model-sized uint8 pixels, at its batch size."""
    spec = backend.preprocess
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)
             for _ in range(backend.batch_size)]
    backend.encode_images(batch)
    backend.encode_images(batch)
    done, started = 0, time.perf_counter()
    while done < min_batches or time.perf_counter() - started < seconds:
        backend.encode_images(batch)
        done += 1
    return done * len(batch) / (time.perf_counter() - started)


def decode_all(pool: PrepPool, decoder: Decoder, images: Sequence[Image], spec: Preprocess,
               batch: int) -> tuple[float, list[Pixels]]:
    """A decoder over all images in batches, as the worker runs it (``prepare`` in the decode
    processes, ``finish`` here): images/s, and the pixels (errors left out)."""

    def decode(part: Sequence[Image]) -> list[Pixels]:
        answers = {a.index: a.outcome for a in pool.prepare(
            [(i, image.data) for i, image in enumerate(part)])}
        ready = [answers[i] for i in range(len(part)) if not isinstance(answers[i], Exception)]
        return [p for p in decoder.finish(ready, spec) if not isinstance(p, Exception)]

    decode(images[:batch])  # warm the processes
    pixels: list[Pixels] = []
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        pixels.extend(decode(images[start:start + batch]))
    return len(images) / (time.perf_counter() - started), pixels


def embed(backend: Backend, pixels: Sequence[Pixels]) -> np.ndarray:
    return np.concatenate([backend.encode_images(pixels[start:start + backend.batch_size])
                           for start in range(0, len(pixels), backend.batch_size)])


def accuracy(reference: np.ndarray, candidate: np.ndarray, texts: np.ndarray, scale: float
             ) -> dict[str, float]:
    """Worst per-image cosine to the reference embeddings, and the largest score difference."""
    cosine = float(np.min(np.sum(reference * candidate, axis=1)))

    def scores(embeddings: np.ndarray) -> np.ndarray:
        logits = scale * embeddings @ texts.T
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    difference = float(np.max(np.abs(scores(reference) - scores(candidate))))
    return {"min_cosine": cosine, "max_score_difference": difference}
