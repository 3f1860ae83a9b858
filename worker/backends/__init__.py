"""Model runtimes behind one small interface; TAGGER_BACKEND picks one (``auto`` measures).

A new runtime is one module with a class shaped like ``Backend`` and a line in ``BACKENDS``.
Every backend returns L2-normalised float32 NumPy embeddings, so scoring is the same for all.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from worker.core.settings import Settings
from worker.decoders import Pixels, Preprocess

BACKENDS = {"torch": "worker.backends.torch_clip:TorchBackend",
            "onnx": "worker.backends.onnx_clip:OnnxBackend"}


class Backend(Protocol):
    """A loaded Chinese CLIP checkpoint on one device, in one precision."""

    name: str  # "torch", "onnx"
    description: str  # what computed a result, stored with it: "onnx int8 cpu"
    text_encoder: str  # what computes text embeddings (they are cached under this key)
    device: str  # "cpu", "cuda:0"
    preprocess: Preprocess
    batch_size: int
    logit_scale: float

    def encode_texts(self, prompts: Sequence[Sequence[str]]) -> np.ndarray:
        """One row per label: the normalised mean of its prompts' embeddings (L, D)."""
        ...

    def encode_images(self, pixels: Sequence[Pixels]) -> np.ndarray:
        """Normalised image embeddings (B, D) for model-sized uint8 pixels."""
        ...

    def is_out_of_memory(self, exc: BaseException) -> bool: ...

    def release_memory(self) -> None: ...

    def memory(self) -> tuple[int, int] | None:
        """Accelerator bytes in use now and at the peak; None on the CPU."""
        ...


def backend_class(name: str) -> Any:
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def load_backend(settings: Settings, folder: Path) -> Backend:
    """The backend TAGGER_BACKEND names, or for ``auto`` the fastest accurate one here."""
    if settings.backend == "auto":
        from worker.backends.choose import choose

        return choose(settings, folder)
    return backend_class(settings.backend)(settings, folder)  # type: ignore[no-any-return]


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
