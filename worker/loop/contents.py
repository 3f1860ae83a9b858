"""Decoded images to the forward thread: known contents take their labels, new ones go once."""

from __future__ import annotations

from worker.core.errors import ItemError
from worker.loop.batcher import Batcher
from worker.loop.dedupe import KnownContent
from worker.loop.finish import Finisher
from worker.loop.work import Batch, Work


class Contents:
    """Groups of decoded images into batches of distinct new contents, submitted to be encoded."""

    def __init__(self, known: KnownContent, finisher: Finisher, batcher: Batcher) -> None:
        self.known = known
        self.finisher = finisher
        self.batcher = batcher

    def submit(self, ready: list[Work], labelset_id: str) -> Batch:
        """Known contents take their labels; the rest (each content once) are finished and go
        to the model; a content its decoder cannot finish fails all its works."""
        found = self.known.lookup(labelset_id, {w.sha256 for w in ready if w.sha256})
        batch = Batch()
        for work in ready:
            sha = work.sha256 or ""
            if sha in found:
                work.labels, work.prepared = found[sha], None
            else:
                batch.add(sha, work)
        pixels = self.finisher.finish([batch.works[sha][0].prepared for sha in batch.shas])
        for sha, outcome in zip(list(batch.shas), pixels, strict=True):
            if isinstance(outcome, ItemError):
                for work in batch.works.pop(sha):
                    work.error = outcome
                batch.shas.remove(sha)
        batch.embeddings = self.batcher.submit([p for p in pixels if not isinstance(p, ItemError)])
        for works in batch.works.values():
            for work in works:
                work.prepared = None  # the pixels are the batcher's now
        return batch
