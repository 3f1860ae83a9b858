"""Models for tests: the tiny random checkpoint, transformers' own scores, and a fake backend."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worker.core.pixels import Pixels, Preprocess
from worker.core.settings import LABELSETS

TEST_LABELS = ["台灯", "家具", "桌子", "椅子", "猫", "狗"]


def tiny_checkpoint(path: Path) -> Path:
    """A random Chinese CLIP small enough for tests, saved like a hub checkpoint."""
    from worker.checkpoint import build

    texts = [p.read_text(encoding="utf-8") for p in LABELSETS.glob("*.txt")]
    return build(path, [*texts, *TEST_LABELS], tiny=True)


def direct_embeddings(model_dir: Path, images: list[bytes]) -> np.ndarray:
    """The checkpoint's normalised image embeddings, through transformers' own processor, fp32."""
    import torch
    from PIL import Image
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    model = ChineseCLIPModel.from_pretrained(model_dir).eval()
    processor = ChineseCLIPProcessor.from_pretrained(model_dir)
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    with torch.no_grad():
        px = processor(images=pil, return_tensors="pt")["pixel_values"]
        img = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
    return (img / img.norm(dim=-1, keepdim=True)).numpy()


def direct_scores(model_dir: Path, labels: list[str], images: list[bytes]) -> list[dict]:
    """What the checkpoint says about each image, through transformers' own processor, fp32."""
    import torch
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    model = ChineseCLIPModel.from_pretrained(model_dir).eval()
    processor = ChineseCLIPProcessor.from_pretrained(model_dir)
    img = torch.from_numpy(direct_embeddings(model_dir, images))
    with torch.no_grad():
        tok = processor(text=labels, padding=True, return_tensors="pt")
        txt = model.text_projection(model.text_model(**tok).last_hidden_state[:, 0])
        txt = txt / txt.norm(dim=-1, keepdim=True)
        probs = (model.logit_scale.exp() * img @ txt.T).softmax(-1)
    return [dict(zip(labels, row.tolist(), strict=True)) for row in probs]


class FakeBackend:
    """A backend with no model: embeddings from the pixels' mean colour and the text's hash.

    For tests where the model is not the subject (the loop, failures, writes): deterministic,
    instant, and it records every batch it saw.
    """

    name = "fake"
    description = "fake float32 cpu"
    text_encoder = "fake"
    device = "cpu"
    logit_scale = 100.0

    def __init__(self, batch_size: int = 4, side: int = 32, dim: int = 8) -> None:
        self.batch_size = batch_size
        self.preprocess = Preprocess(height=side, width=side)
        self.dim = dim
        self.batches: list[int] = []
        self.fail_with: BaseException | None = None

    def encode_texts(self, prompts: Sequence[Sequence[str]]) -> np.ndarray:
        rows = [self._vector(hashlib.sha256("".join(p).encode()).digest()) for p in prompts]
        return np.stack(rows)

    def encode_images(self, pixels: Sequence[Pixels]) -> np.ndarray:
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append(len(pixels))
        return np.stack([self._vector(np.asarray(p).mean(axis=(0, 1)).tobytes()) for p in pixels])

    def _vector(self, seed: bytes) -> np.ndarray:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed).digest()[:8], "big"))
        vector = rng.standard_normal(self.dim).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, MemoryError)

    def release_memory(self) -> None:
        pass

    def memory(self) -> tuple[int, int] | None:
        return None


def stored_model(url_or_engine: Any, name: str = "m") -> Any:
    """The database's model row of results written with ``Result(model=name)`` and no weights
    (tests without a checkpoint: the name stands for the weights)."""
    from worker.db import models
    from worker.db.schema import engine_for

    engine = engine_for(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    return models.identify(engine, name, name)
