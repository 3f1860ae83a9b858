"""The towers a search runs without torch: ONNX files, exported once per host beside the cache.

    python -m worker.backends.search_towers      # the producer runs it when they are missing

The image tower is the workers' own cached float32 file (onnx_export.ModelCache); the text
tower is exported here beside it, with the checkpoint's tokenizer as one ``tokenizer.json``
that the ``tokenizers`` library reads. ``search.json`` names the three files (with their sizes)
and what a query needs to know: preprocessing, text length, the width of the embeddings.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from worker.backends.folder import resolve
from worker.backends.onnx_export import OPSET, ModelCache, quantize_int8, quiet
from worker.backends.probe import MIN_COSINE as INT8_BAR
from worker.backends.torch_clip import TEXT_LENGTH, TorchBackend
from worker.backends.weights import atomic_path, checkpoint_digest
from worker.core.settings import Settings, load_settings

MANIFEST = "search.json"
TEXT_GRAPH_VERSION = 1  # bump when TextTower changes: older files are exported again
PROBE_TEXTS = ["红色连衣裙", "台灯的照片。", "一只猫", "a photo of a dog", "手提包" * 20]
MIN_COSINE = 0.9999  # the exported float32 text tower against torch float32, on PROBE_TEXTS


class TextTower(torch.nn.Module):
    """(B, T) token ids and attention mask -> text embeddings (the [CLS] state, projected)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        return self.text_projection(hidden[:, 0])


def export_text(model: Any, path: Path) -> None:
    """TorchScript's exporter: the torch.export one fails on BERT's mask arithmetic here."""
    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64))
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    torch.onnx.export(TextTower(model).eval(), example, str(path), dynamo=False,
                      input_names=["input_ids", "attention_mask"], output_names=["embeddings"],
                      dynamic_axes={**axes, "embeddings": {0: "batch"}}, opset_version=OPSET)


def text_agreement(backend: TorchBackend, path: Path) -> float:
    """The exported file's worst cosine to torch float32 on the probe texts."""
    truth = backend.encode_texts([[text] for text in PROBE_TEXTS])
    tokens = backend.tokenizer(PROBE_TEXTS, padding=True, truncation=True,
                               max_length=TEXT_LENGTH, return_tensors="np")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = session.run(None, {"input_ids": tokens["input_ids"].astype(np.int64),
                              "attention_mask": tokens["attention_mask"].astype(np.int64)})[0]
    rows = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return float((rows * truth).sum(axis=1).min())


def text_tower(backend: TorchBackend, folder: Path) -> tuple[Path, float]:
    """The text tower a query runs: int8 (dynamically quantised, ~3.5x faster than float32 on
    2 cores) where it agrees with torch float32 as closely as the workers ask of an int8 image
    tower (probe.MIN_COSINE), else float32. With the worst cosine to torch float32."""
    name = f"opset{OPSET}-g{TEXT_GRAPH_VERSION}-ort{ort.__version__}-torch{torch.__version__}"
    exact, small = folder / f"text-float32-{name}.onnx", folder / f"text-int8-{name}.onnx"
    if not exact.is_file():
        with atomic_path(exact) as temporary, quiet(), torch.inference_mode():
            export_text(backend.model, temporary)
    cosine = text_agreement(backend, exact)
    if cosine < MIN_COSINE:
        exact.unlink()
        raise RuntimeError(f"the exported text tower's worst cosine to torch float32 is "
                           f"{cosine:.5f} (< {MIN_COSINE}); not kept")
    if not small.is_file():
        with atomic_path(small) as temporary, quiet():
            quantize_int8(exact, temporary)
    quantised = text_agreement(backend, small)
    return (small, quantised) if quantised >= INT8_BAR else (exact, cosine)


def build(settings: Settings) -> Path:
    """Both towers and the manifest in the checkpoint's cache folder; the manifest's path."""
    folder = resolve(settings.model)
    backend = TorchBackend(dataclasses.replace(settings, device="cpu"), folder, "float32")
    cache = ModelCache(settings.cache_dir / "onnx",
                       checkpoint_digest(folder, settings.cache_dir).digest, lambda: backend.model,
                       backend.preprocess, backend.encode_images)
    image = cache.get("float32")
    with cache.locked():
        text, cosine = text_tower(backend, cache.folder)
        tokenizer = cache.folder / "tokenizer.json"
        with atomic_path(tokenizer) as temporary:
            backend.tokenizer.backend_tokenizer.save(str(temporary))
        files = {"image": image.name, "text": text.name, "tokenizer": tokenizer.name}
        manifest = {**files, "sizes": {k: (cache.folder / v).stat().st_size
                                       for k, v in files.items()},
                    "preprocess": dataclasses.asdict(backend.preprocess),
                    "text_length": TEXT_LENGTH, "text_cosine": cosine,
                    "text_precision": "int8" if "int8" in text.name else "float32",
                    "dim": int(backend.model.config.projection_dim)}
        path = cache.folder / MANIFEST
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return path


def main() -> None:
    print(build(load_settings()))


if __name__ == "__main__":
    sys.exit(main())
