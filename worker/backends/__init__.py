"""Model runtimes behind one small interface, their registry, and TAGGER_BACKEND's choice.

A new runtime is one module with a class shaped like ``Backend`` and one line in ``BACKENDS``:
a ``BackendPart`` declaring the precisions it runs (TAGGER_PRECISION's choices) and its runtime
libraries (preloaded by the worker's parent; the producer never imports them). Its
``auto_candidates`` says which precisions ``TAGGER_BACKEND=auto`` should measure on a device.
Every backend returns L2-normalised float32 NumPy embeddings, so scoring is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from worker.core.pixels import Pixels, Preprocess
from worker.core.registry import Part, Registry

if TYPE_CHECKING:
    import numpy as np

    from worker.core.settings import Settings


class Backend(Protocol):
    """A loaded Chinese CLIP checkpoint on one device, in one precision."""

    name: str  # "torch", "onnx"
    description: str  # what computed a result, stored with it: "onnx int8 cpu"
    text_encoder: str  # what computes text embeddings (they are cached under this key)
    device: str  # "cpu", "cuda:0"
    preprocess: Preprocess
    batch_size: int
    logit_scale: float
    # The backend whose text tower this one uses (``reference``, shared), or None: its own.
    # ``auto`` frees the image tower of a shared one that lost (``drop_image_tower``).
    text: Backend | None

    def __init__(self, settings: Settings, folder: Path, precision: str | None = None, *,
                 reference: Any = None) -> None:
        """``reference``: a float32 torch backend already loaded on this device, which a
        runtime may share (for its text tower) instead of loading the checkpoint again."""
        ...

    @classmethod
    def auto_candidates(cls, device: str, precision: str) -> list[str]:
        """The precisions worth measuring for ``auto`` on ``device`` ("cpu", "cuda") when
        TAGGER_PRECISION is ``precision`` ("auto" or one precision)."""
        ...

    def encode_texts(self, prompts: Sequence[Sequence[str]]) -> np.ndarray:
        """One row per label: the normalised mean of its prompts' embeddings (L, D)."""
        ...

    def encode_images(self, pixels: Sequence[Pixels]) -> np.ndarray:
        """Normalised image embeddings (B, D) for model-sized uint8 pixels."""
        ...

    def drop_image_tower(self) -> None:
        """Free the image tower: another backend encodes the images, this one only texts."""
        ...

    def is_out_of_memory(self, exc: BaseException) -> bool: ...

    def release_memory(self) -> None: ...

    def memory(self) -> tuple[int, int] | None:
        """Accelerator bytes in use now and at the peak; None on the CPU."""
        ...


@dataclass(frozen=True)
class BackendPart(Part):
    """A backend's registration, with what others need before importing it."""

    precisions: tuple[str, ...] = ()  # what TAGGER_PRECISION may name for it
    runtime: tuple[str, ...] = ()  # modules it loads: preloaded, never in the producer


BACKENDS: Registry[type[Backend]] = Registry("backend", {
    "torch": BackendPart("worker.backends.torch_clip:TorchBackend",
                         precisions=("float32", "float16", "bfloat16"),
                         runtime=("torch",
                                  "transformers.models.chinese_clip.modeling_chinese_clip")),
    "onnx": BackendPart("worker.backends.onnx_clip:OnnxBackend",
                        precisions=("float32", "float16", "int8"), runtime=("onnxruntime",)),
}, kind=BackendPart)


def runtime_modules() -> tuple[str, ...]:
    """Every registered backend's runtime modules, in registration order."""
    declared = (getattr(part, "runtime", ()) for part in BACKENDS.parts().values())
    return tuple(dict.fromkeys(m for group in declared for m in group))
