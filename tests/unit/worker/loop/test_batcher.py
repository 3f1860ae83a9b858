"""The forward thread: batches filled across chunks, errors to every waiting chunk, OOM split."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from testkit.models import FakeBackend
from worker.loop.batcher import Batcher
from worker.prep.turns import Turns


class SlowBackend(FakeBackend):
    """The fake model, its passes held until released: chunks pile up meanwhile."""

    def __init__(self, **options: int) -> None:
        super().__init__(**options)
        self.started, self.release = threading.Event(), threading.Event()

    def encode_images(self, pixels):  # type: ignore[no-untyped-def]
        self.started.set()
        self.release.wait(5)
        return super().encode_images(pixels)


@pytest.fixture
def turns() -> Iterator[Turns]:
    made = Turns(enabled=False, processes=1)
    yield made
    made.close()


def images(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(count)]


def test_a_batch_takes_images_from_several_chunks(turns: Turns):
    backend = SlowBackend(batch_size=8)
    batcher = Batcher(backend, turns)
    first = batcher.submit(images(2, 0))  # runs alone while the others queue behind it
    assert backend.started.wait(5)
    waiting = [batcher.submit(images(3, seed)) for seed in (1, 2, 3)]
    backend.release.set()
    results = [f.result(5) for f in (first, *waiting)]
    batcher.close()
    assert backend.batches == [2, 8, 1]  # 3 + 3 + 2 of the third, then its last one
    alone = FakeBackend(batch_size=8)
    for seed, got in zip((0, 1, 2, 3), results, strict=True):
        expected = alone.encode_images(images(len(got), seed))
        assert np.allclose(got, expected)  # each chunk gets its own rows back, in order


def test_an_error_reaches_every_waiting_chunk_and_the_thread_goes_on(turns: Turns):
    backend = FakeBackend(batch_size=4)
    backend.fail_with = ValueError("a bug in the runtime")
    batcher = Batcher(backend, turns)
    with pytest.raises(ValueError, match="a bug"):
        batcher.submit(images(2, 0)).result(5)
    backend.fail_with = None
    assert batcher.submit(images(2, 1)).result(5).shape == (2, backend.dim)
    batcher.close()


def test_out_of_memory_halves_the_batch(turns: Turns):
    class Tight(FakeBackend):
        def encode_images(self, pixels):  # type: ignore[no-untyped-def]
            if len(pixels) > 2:
                raise MemoryError("out of memory")
            return super().encode_images(pixels)

    backend = Tight(batch_size=8)
    batcher = Batcher(backend, turns)
    assert batcher.submit(images(8, 0)).result(5).shape == (8, backend.dim)
    batcher.close()
    assert backend.batches == [2, 2, 2, 2]


def test_the_failed_pass_is_released_before_its_halves_run(turns: Turns):
    import weakref

    import torch

    class Tight(FakeBackend):
        """Room for two images: a larger pass raises after allocating its activations."""

        def __init__(self, **options: int) -> None:
            super().__init__(**options)
            self.failed: list[weakref.ref[torch.Tensor]] = []
            self.alive_at_retry: list[int] = []

        def encode_images(self, pixels):  # type: ignore[no-untyped-def]
            self.alive_at_retry.append(sum(ref() is not None for ref in self.failed))
            activations = torch.zeros(len(pixels), 1024)
            if len(pixels) > 2:
                self.failed.append(weakref.ref(activations))
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().encode_images(pixels)

        def is_out_of_memory(self, exc: BaseException) -> bool:
            return isinstance(exc, torch.OutOfMemoryError)

    backend = Tight(batch_size=8)
    batcher = Batcher(backend, turns)
    assert batcher.submit(images(8, 0)).result(5).shape == (8, backend.dim)
    batcher.close()
    assert backend.batches == [2, 2, 2, 2]
    # Retried inside the except block, each half ran beside the failed pass's activations.
    assert backend.alive_at_retry == [0] * 7
