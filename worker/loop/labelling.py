"""Batches to labels: each content's embedding scored against the chunk's label set, once."""

from __future__ import annotations

from worker.backends import Backend
from worker.loop.dedupe import KnownContent
from worker.loop.labelstore import Scoring
from worker.loop.scores import top_labels
from worker.loop.work import Batch


class Labeller:
    """Labels every work of a batch, whether its embeddings came from the forward thread or from
    the store; labels computed here are remembered for identical bytes."""

    def __init__(self, backend: Backend, known: KnownContent, top_k: int) -> None:
        self.backend = backend
        self.known = known
        self.top_k = top_k  # labels stored per image

    def label(self, batch: Batch, scoring: Scoring) -> None:
        """Softmax over the label set, top-k, for each content of the batch."""
        if not batch.shas or batch.embeddings is None:
            return
        embeddings = batch.embeddings.result()
        scored = top_labels(embeddings, scoring.labelset, scoring.texts,
                            self.backend.logit_scale, self.top_k)
        for sha, labels, embedding in zip(batch.shas, scored, embeddings, strict=True):
            if not batch.kept:
                self.known.remember(scoring.labelset.id, sha, labels)
            for work in batch.works[sha]:
                work.labels = labels
                if batch.kept:
                    work.kept = True
                else:
                    work.embedding = embedding
