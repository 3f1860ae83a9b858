"""Label sets and their text embeddings, once per worker process: from the database or encoded."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy.engine import Engine

from worker.backends import Backend
from worker.core.labels import LabelSet
from worker.db import labelsets as db
from worker.db import learned

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scoring:
    """A label set and its (labels, dim) text embeddings: what images are scored against."""

    labelset: LabelSet
    texts: np.ndarray


class LabelStore:
    """Label sets by id, each encoded once per process; the fleet shares the encodings."""

    def __init__(self, engine: Engine, model_id: int, backend: Backend) -> None:
        self.engine = engine
        self.model_id = model_id  # the weights: text embeddings of other weights never serve
        self.backend = backend
        self._known: dict[str, Scoring] = {}
        self._lock = threading.Lock()  # held while a label set is encoded

    def add(self, labelset: LabelSet) -> Scoring:
        """Store a label set (the worker's default) and make it ready to score with."""
        db.save_labelset(self.engine, labelset)
        scoring = self.get(labelset.id)
        assert scoring is not None
        return scoring

    def get(self, labelset_id: str) -> Scoring | None:
        """The label set and its text embeddings; None if the database does not know it."""
        with self._lock:
            if labelset_id not in self._known:
                labelset = db.load_labelset(self.engine, labelset_id)
                texts = self._embed(labelset) if labelset is not None else None
                if texts is None:  # unknown, or a learned version without its vectors
                    return None
                self._known[labelset_id] = Scoring(labelset, texts)
            return self._known[labelset_id]

    def _embed(self, labelset: LabelSet) -> np.ndarray | None:
        """Text embeddings from the database's cache, or computed here and cached for all; a
        learned version's own vectors instead (no text tower)."""
        if labelset.learned:
            return self._learned(labelset)
        key = (self.model_id, labelset.id, self.backend.text_encoder)
        cached = db.load_text_embeddings(self.engine, *key)
        if cached:
            rows, dim, data = cached
            return np.frombuffer(data, dtype=np.float32).reshape(rows, dim).copy()
        started = time.perf_counter()
        embeddings = np.ascontiguousarray(self.backend.encode_texts(labelset.prompts()),
                                          dtype=np.float32)
        log.info("encoded %d labels x %d templates in %.1fs", len(labelset.labels),
                 len(labelset.templates), time.perf_counter() - started)
        db.save_text_embeddings(self.engine, *key, *embeddings.shape, embeddings.tobytes())
        return embeddings

    def _learned(self, labelset: LabelSet) -> np.ndarray | None:
        """A learned version's vectors, rescaled so that the backend's logit scale gives the
        logits they were learned for."""
        vectors = learned.load_vectors(self.engine, labelset.id)
        if vectors is None or vectors.digest() != labelset.learned:
            log.error("label set %s is a learned version whose vectors are not in the results "
                      "database", labelset.id)
            return None
        matrix = np.frombuffer(vectors.data, dtype="<f4").reshape(vectors.rows, vectors.dim)
        return np.ascontiguousarray(matrix * np.float32(vectors.scale / self.backend.logit_scale),
                                    dtype=np.float32)
