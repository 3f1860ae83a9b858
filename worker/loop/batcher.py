"""One forward pass at a time per process, its batch filled from every chunk in flight.

A chunk submits its decoded images and gets a future of their embeddings; this thread packs
what all chunks submitted (``-P threads -c N`` runs N chunks at once) into batches of the
backend's size, so a batch is not capped by one chunk's images. Each chunk still writes and
acknowledges only its own results: at-least-once is unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from worker.backends import Backend
from worker.core import metrics
from worker.core.halves import in_halves
from worker.core.pixels import Pixels
from worker.prep.turns import Turns

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One submission: its images, their embeddings as they are computed, and its future."""

    pixels: Sequence[Pixels]
    future: Future[np.ndarray] = field(default_factory=Future)
    rows: list[np.ndarray | None] = field(default_factory=list)
    done: int = 0

    def __post_init__(self) -> None:
        self.rows = [None] * len(self.pixels)


class Batcher:
    """Forward passes for a process; ``linger``: seconds a partial batch waits for more."""

    def __init__(self, backend: Backend, turns: Turns, linger: float = 0.0) -> None:
        self.backend = backend
        self.turns = turns
        self.linger = linger
        self.forward_seconds = 0.0
        self._waiting: deque[tuple[Request, int]] = deque()  # (request, image index)
        self._cond = threading.Condition()
        self._closed = False
        self.thread = threading.Thread(target=self._run, name="forward", daemon=True)
        self.thread.start()

    def submit(self, pixels: Sequence[Pixels]) -> Future[np.ndarray]:
        """The (len(pixels), D) normalised embeddings, once computed."""
        request = Request(pixels)
        if not pixels:
            request.future.set_result(np.zeros((0, 0), np.float32))
            return request.future
        with self._cond:
            if self._closed:
                raise RuntimeError("the forward thread is closed")
            self._waiting.extend((request, i) for i in range(len(pixels)))
            self._cond.notify()
        return request.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.thread.join(30)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                embeddings = self._forward([request.pixels[i] for request, i in batch])
            except Exception as exc:  # each waiting chunk gets the error, none hangs
                for request in {id(r): r for r, _ in batch}.values():
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            for (request, i), row in zip(batch, embeddings, strict=True):
                request.rows[i] = row
                request.done += 1
                if request.done == len(request.rows) and not request.future.done():
                    request.future.set_result(np.stack(request.rows))  # type: ignore[arg-type]

    def _next_batch(self) -> list[tuple[Request, int]] | None:
        size = self.backend.batch_size
        with self._cond:
            self._cond.wait_for(lambda: self._waiting or self._closed)
            if not self._waiting:
                return None
            deadline = time.monotonic() + self.linger
            while len(self._waiting) < size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    break
            count = min(size, len(self._waiting))
            batch = [self._waiting.popleft() for _ in range(count)]
        return [(r, i) for r, i in batch if not r.future.done()]

    def _forward(self, pixels: list[Pixels]) -> np.ndarray:
        """Run the image tower; on out-of-memory, split the batch instead of failing it."""
        if not pixels:
            return np.zeros((0, 0), np.float32)
        rows = in_halves(pixels, self._encode, self.backend.is_out_of_memory, self._release)
        failed = next((row for row in rows if isinstance(row, BaseException)), None)
        if failed is not None:  # one image alone is too much: every chunk waiting hears it
            raise failed
        return np.stack(rows)  # type: ignore[arg-type]

    def _encode(self, pixels: Sequence[Pixels]) -> np.ndarray:
        started = time.perf_counter()
        with self.turns.model():
            out = self.backend.encode_images(pixels)
        elapsed = time.perf_counter() - started
        self.forward_seconds += elapsed
        metrics.observe_batch(len(pixels), elapsed)
        memory = self.backend.memory()
        if memory:
            metrics.observe_gpu_memory(*memory)
        return out

    def _release(self, size: int) -> None:
        log.warning("out of memory at batch %d", size)
        self.backend.release_memory()
