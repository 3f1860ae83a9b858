"""TAGGER_BACKEND: the runtime it names, or for ``auto`` the fastest accurate one measured here."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.backends import BACKENDS, Backend, remembered
from worker.backends.probe import MIN_COSINE, probe_images, worst_cosine
from worker.backends.torch_clip import TorchBackend, choose_device
from worker.core.errors import ConfigError
from worker.core.settings import Settings

log = logging.getLogger(__name__)

ROUNDS = 2  # timed rounds per candidate, after one untimed pass; the best round counts
ROUND_SECONDS = 1.0  # at least, per candidate and round: fast passes are repeated
MAX_PROBE = 64  # images: enough to time a GPU batch, few enough to build in a blink
REFERENCE = "torch float32"


@dataclass
class Candidate:
    """What one runtime measured on the probe (``backend.candidates``, metrics, the log)."""

    name: str
    images_per_second: float = 0.0
    min_cosine: float | None = None
    kept: bool = False
    error: str | None = None


def candidate_names(precision: str, device: torch.device) -> list[str]:
    """What each registered runtime offers on ``device`` for TAGGER_PRECISION, as
    "runtime precision" names; the reference comes first where it is one of them."""
    names = [f"{name} {offered}" for name in BACKENDS
             for offered in BACKENDS.get(name).auto_candidates(device.type, precision)]
    if not names:
        raise ConfigError(f"TAGGER_PRECISION={precision} has no runtime on {device}: int8 runs "
                          "on the CPU (TAGGER_DEVICE=cpu)")
    return sorted(names, key=lambda name: name != REFERENCE)


def load_candidate(name: str, settings: Settings, folder: Path, reference: TorchBackend
                   ) -> Backend:
    if name == REFERENCE:
        return reference
    runtime, _, precision = name.partition(" ")
    # The reference is shared: a runtime may encode texts with it instead of a second copy.
    return BACKENDS.get(runtime)(settings, folder, precision, reference=reference)


def time_round(backend: Backend, probe: list[np.ndarray]) -> float:
    """Images per second over passes lasting ROUND_SECONDS or more (one slow pass is enough)."""
    passes, started = 0, time.perf_counter()
    while True:
        backend.encode_images(probe)
        passes += 1
        elapsed = time.perf_counter() - started
        if elapsed >= ROUND_SECONDS:
            return passes * len(probe) / elapsed


def load_all(names: list[str], settings: Settings, folder: Path, reference: TorchBackend,
             probe: list[np.ndarray], truth: np.ndarray
             ) -> tuple[list[Candidate], dict[str, Backend]]:
    """Each candidate loaded and run once, untimed (allocations, kernel choice): its cosine."""
    results: list[Candidate] = []
    loaded: dict[str, Backend] = {}
    for name in names:
        candidate = Candidate(name)
        results.append(candidate)
        try:
            backend = load_candidate(name, settings, folder, reference)
            rows = truth if backend is reference else backend.encode_images(probe)
        except Exception as exc:  # one runtime failing here must not stop the worker
            _failed(candidate, exc)
            continue
        candidate.min_cosine = worst_cosine(rows, truth)
        loaded[name] = backend
    return results, loaded


def time_all(results: list[Candidate], loaded: dict[str, Backend], probe: list[np.ndarray]
             ) -> None:
    """The best of ROUNDS rounds, candidates taking turns: on a shared host a neighbour's
    burst then slows one round of every candidate, instead of all of one candidate's.

    A candidate timed already (the reference's first pass) sits out the first round.
    """
    for round_ in range(ROUNDS):
        for candidate in results:
            if candidate.name not in loaded or (round_ == 0 and candidate.images_per_second):
                continue
            try:
                rate = time_round(loaded[candidate.name], probe)
            except Exception as exc:
                _failed(candidate, exc)
                del loaded[candidate.name]
                continue
            candidate.images_per_second = max(candidate.images_per_second, rate)


def _failed(candidate: Candidate, exc: Exception) -> None:
    log.warning("backend candidate %s failed: %s", candidate.name, exc)
    candidate.error = f"{type(exc).__name__}: {exc}"
    candidate.images_per_second = 0.0


def load_backend(settings: Settings, folder: Path) -> Backend:
    """The backend TAGGER_BACKEND names, or for ``auto`` the fastest accurate one here."""
    if settings.backend == "auto":
        return choose(settings, folder)
    return BACKENDS.get(settings.backend)(settings, folder)


def choose(settings: Settings, folder: Path) -> Backend:
    """The fastest candidate whose worst cosine to torch float32 is >= MIN_COSINE: measured
    once per machine, weights, runtime versions and batch (worker/backends/remembered.py)."""
    started = time.monotonic()
    device = choose_device(settings.device)
    names = candidate_names(settings.precision, device)
    reference = TorchBackend(settings, folder, "float32")  # the yardstick, and the text side
    key = remembered.choice_key(folder, settings.cache_dir, device, reference.batch_size,
                                names)
    found = remembered.recall(settings.cache_dir, key)
    if found is not None:
        backend = _recalled(found, settings, folder, reference)
        if backend is not None:
            return backend
    winner = _measure(settings, folder, names, reference, started)
    candidates = winner.candidates  # type: ignore[attr-defined]
    kept = [c["name"] for c in candidates if c["kept"]]
    if kept and not any(c["error"] for c in candidates):  # a failure may not fail next time
        remembered.remember(settings.cache_dir, key, kept[0], candidates)
    return winner


def _recalled(found: dict[str, Any], settings: Settings, folder: Path,
              reference: TorchBackend) -> Backend | None:
    """The remembered winner, loaded; None (measure again) if it no longer loads."""
    try:
        backend = load_candidate(found["kept"], settings, folder, reference)
    except Exception as exc:  # a runtime gone or broken since: measure what there is now
        log.warning("backend %s, chosen here before, does not load (%s): measuring the "
                    "candidates again", found["kept"], exc)
        return None
    _share_text(backend, reference)
    log.info("backend auto chose %s, as measured on this machine at %s (measured again when "
             "the machine, the weights, a runtime version or the batch changes)",
             backend.description, found["measured_at"])
    backend.candidates = found["candidates"]  # type: ignore[attr-defined]
    return backend


def _measure(settings: Settings, folder: Path, names: list[str], reference: TorchBackend,
             started: float) -> Backend:
    """Every candidate loaded, checked on the probe and timed; the fastest accurate one."""
    probe = probe_images(reference.preprocess, min(reference.batch_size, MAX_PROBE))
    first = time.perf_counter()
    truth = reference.encode_images(probe)
    # Eager torch compiles nothing on a first pass: it counts as one of its timed rounds.
    first_rate = len(probe) / (time.perf_counter() - first)
    results, loaded = load_all(names, settings, folder, reference, probe, truth)
    for candidate in results:
        if candidate.name == REFERENCE:
            candidate.images_per_second = first_rate
    time_all(results, loaded, probe)
    accurate = [c for c in results if c.name in loaded and (c.min_cosine or 0) >= MIN_COSINE]
    kept = max(accurate, key=lambda c: c.images_per_second, default=None)
    winner = loaded[kept.name] if kept else None
    loaded.clear()  # the candidates not kept are freed here
    gc.collect()
    return _keep(winner, kept, reference, results, time.monotonic() - started)


def _keep(winner: Backend | None, kept: Candidate | None, reference: TorchBackend,
          results: list[Candidate], seconds: float) -> Backend:
    if winner is None or kept is None:
        log.warning("no candidate reached a worst cosine of %s to torch float32 on the probe; "
                    "falling back to torch float32", MIN_COSINE)
        winner = reference
    else:
        kept.kept = True
    _share_text(winner, reference)
    for candidate in results:
        log.info("backend candidate %s: %s", candidate.name, _figures(candidate))
    log.info("backend auto chose %s (%d candidates measured in %.1f s)", winner.description,
             len(results), seconds)
    winner.candidates = [asdict(candidate) for candidate in results]  # type: ignore[attr-defined]
    return winner


def _share_text(winner: Backend, reference: TorchBackend) -> None:
    if winner is not reference and winner.text is reference:
        reference.drop_image_tower()  # another runtime won: the shared model now does texts


def _figures(candidate: Candidate) -> str:
    if candidate.error is not None:
        return f"failed ({candidate.error})"
    verdict = ("kept" if candidate.kept else "not kept" if candidate.min_cosine is not None
               and candidate.min_cosine >= MIN_COSINE else "too inaccurate")
    return (f"{candidate.images_per_second:.2f} images/s, worst cosine "
            f"{candidate.min_cosine:.5f} to torch float32 on the probe, {verdict}")
