"""The loop over one chunk's images, one way: kept claims -> prepare -> contents -> labels.

Fetching, hashing and decoding happen in the decode processes (worker/prep); this process
receives each image's content hash and pixels (or its failure). Each stage is its own module,
called once per group in this order: `kept` (claims believed, URIs to check or fetch),
`work` (an answer taken: ready, failed, or to try again), `contents` (known contents take
their labels, each new one is finished by `finish` and handed to the forward thread,
`batcher`), `labelling` (one scoring path for kept and computed embeddings).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.backends import Backend
from worker.core.contract import Item
from worker.decoders import Decoder
from worker.loop import kept as kept_claims
from worker.loop.batcher import Batcher
from worker.loop.contents import Contents
from worker.loop.dedupe import KnownContent
from worker.loop.finish import Finisher
from worker.loop.labelling import Labeller
from worker.loop.labelstore import Scoring
from worker.loop.work import Batch, Work, received, same_outcome_for_same_content
from worker.prep import Checked
from worker.prep.pool import PrepPool

log = logging.getLogger(__name__)


class Tagger:
    """A chunk's images through the loop's stages, in order, each stage handed its parts:
    kept claims -> decode processes -> contents (dedupe, finish, forward) -> labels."""

    def __init__(self, backend: Backend, decoder: Decoder, prep: PrepPool, batcher: Batcher,
                 known: KnownContent, top_k: int, group: int) -> None:
        """``group``: images handed on to be finished and encoded together, as soon as that
        many are decoded (the forward thread packs groups of every chunk into its batches)."""
        self.backend, self.decoder, self.prep, self.batcher = backend, decoder, prep, batcher
        self.known = known
        self.top_k = top_k
        self.group = group
        self.contents = Contents(known, Finisher(decoder, prep, backend.preprocess), batcher)
        self.labeller = Labeller(backend, known, top_k)

    def tag(self, items: Sequence[Item], scoring: Scoring, roots: tuple[Path, ...],
            final: bool) -> tuple[list[Work], dict[str, float]]:
        """Every item's labels or error. ``roots``: the folders files may be read from;
        ``final``: the last try, where a transient error becomes the item's failure."""
        started, forward = time.perf_counter(), self.batcher.forward_seconds
        works = [Work(item) for item in items]
        kept = kept_claims.confirmed(self.known, works)
        batches, checked = self._prepare(works, kept, scoring, roots, final)
        prepared_at = time.perf_counter()
        for batch in [kept_claims.batch(works, kept, checked), *batches]:
            self.labeller.label(batch, scoring)
        same_outcome_for_same_content(works)
        _return_freed_memory()
        ended = time.perf_counter()
        # With several chunks in flight, forward passes are shared: "forward" is the time
        # the tower ran while this chunk was being tagged.
        return works, {"prepare": prepared_at - started, "score": ended - prepared_at,
                       "forward": self.batcher.forward_seconds - forward,
                       "total": ended - started}

    def _prepare(self, works: list[Work], kept: kept_claims.Kept, scoring: Scoring,
                 roots: tuple[Path, ...], final: bool) -> tuple[list[Batch], list[int]]:
        """The decode processes' answers, handed on a group at a time as they come: the
        batches submitted, and the kept claims whose URIs passed their checks."""
        batches, ready, checked = [], [], []
        for prepared in self.prep.prepare(kept_claims.requests(works, kept), roots):
            if isinstance(prepared.outcome, Checked):
                checked.append(prepared.index)
            elif received(works[prepared.index], prepared, final):
                ready.append(works[prepared.index])
            if len(ready) >= self.group:
                batches.append(self.contents.submit(ready, scoring.labelset.id))
                ready = []
        if ready:
            batches.append(self.contents.submit(ready, scoring.labelset.id))
        return batches, checked

    def close(self) -> None:
        self.batcher.close()
        self.prep.close()
        self.decoder.close()


def _return_freed_memory() -> None:
    """Hand freed buffers back to the OS, so the worker's RSS stays flat.

    Each thread gets its own glibc malloc arena; image-sized buffers leave them fragmented and
    glibc only returns memory at the top of a heap, so RSS creeps up chunk after chunk.
    malloc_trim(0) releases the free pages of every arena.
    """
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


_libc = _load_libc()
