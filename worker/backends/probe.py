"""The probe: photo-like images every runtime is checked on against torch float32, and the bar."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from worker.core.pixels import Preprocess

MIN_COSINE = 0.999  # worst image-embedding cosine to torch float32 on the probe, to be kept
PROBE_SEED = 1234


def probe_images(spec: Preprocess, count: int, seed: int = PROBE_SEED) -> list[np.ndarray]:
    """Deterministic photo-like images: colour ramps, discs and boxes, then sensor noise.

    Pure noise would make every runtime look alike (or unlike) for reasons photos do not have.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:spec.height, 0:spec.width].astype(np.float32)
    side = max(spec.height, spec.width)
    images = []
    for _ in range(count):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * cols + np.sin(angle) * rows
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
        start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        image = start + ramp[..., None] * (end - start)
        for _ in range(int(rng.integers(1, 6))):
            y, x = rng.uniform(0, spec.height), rng.uniform(0, spec.width)
            size = rng.uniform(0.05, 0.35) * side
            if rng.random() < 0.5:
                mask = (rows - y) ** 2 + (cols - x) ** 2 < size**2
            else:
                mask = (abs(rows - y) < size) & (abs(cols - x) < size * rng.uniform(0.3, 1.0))
            image[mask] = rng.uniform(0, 255, 3)
        image += rng.normal(0, rng.uniform(2, 20), image.shape)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def worst_cosine(rows: np.ndarray, truth: np.ndarray) -> float:
    """The lowest cosine between matching rows of two sets of normalised embeddings."""
    return float((rows * truth).sum(axis=1).min())


def onnx_agreement(path: Path, probe: Sequence[np.ndarray], truth: np.ndarray) -> float:
    """The worst cosine of an ONNX image tower's embeddings of ``probe`` to ``truth`` (torch
    float32's), run on the CPU provider, which runs every precision this project exports."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = np.asarray(session.run(None, {session.get_inputs()[0].name: np.stack(probe)})[0],
                      dtype=np.float32)
    rows = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return worst_cosine(rows, truth)
