"""Single-stage measurements: the seed-style loop, the bare image tower, decode alone."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.corpus import Image
from worker.decode import decode
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.model import Scorer


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


def tower(scorer: Scorer, seconds: float = 10.0, min_batches: int = 3) -> float:
    """The image tower alone on a pre-made, normalised batch on the device, in its dtype."""
    import torch

    model, spec, batch = scorer.model, scorer.preprocess, scorer.batch_size
    pixels = torch.randn(batch, 3, spec.height, spec.width, device=scorer.device,
                         dtype=scorer.dtype)
    sync = torch.cuda.synchronize if pixels.is_cuda else (lambda: None)

    def run() -> None:
        with torch.inference_mode():
            pooled = model.vision_model(pixel_values=pixels).pooler_output
            model.visual_projection(pooled).float().cpu()

    run()
    run()
    sync()
    done, started = 0, time.perf_counter()
    while done < min_batches or time.perf_counter() - started < seconds:
        run()
        done += 1
    sync()
    return done * batch / (time.perf_counter() - started)


def decode_rate(images: Sequence[Image], scorer: Scorer, settings: Settings,
                threads: int | None = None) -> float:
    """The pipeline's own decode function over all images, on its decode thread count."""
    spec = scorer.preprocess

    def one(image: Image) -> None:
        decode(image.data, spec, max_pixels=settings.max_image_pixels, draft=settings.jpeg_draft)

    with ThreadPoolExecutor(threads or settings.decode_threads) as pool:
        list(pool.map(one, images[: min(len(images), 8)]))  # warm the threads and the codecs
        started = time.perf_counter()
        list(pool.map(one, images))
        return len(images) / (time.perf_counter() - started)
