"""A run's results written straight to the database, as the workers would have written them."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from worker.backends.weights import checkpoint_digest
from worker.core.contract import Item, Result
from worker.core.embedding import sha256_of
from worker.core.errors import Reason
from worker.core.labels import LabelSet
from worker.db.labelsets import save_labelset
from worker.db.runs import create_run, update_run
from worker.db.schema import engine_for
from worker.db.writes import write_results


def random_labels(labelset: LabelSet, rng: np.random.Generator, top_k: int = 5
                  ) -> list[dict[str, object]]:
    """The ``top_k`` best of a random softmax over the label set, highest first."""
    scores = rng.dirichlet(np.full(len(labelset.labels), 0.3))
    best = np.argsort(-scores)[:top_k]
    return [{"label": labelset.labels[i], "score": round(float(scores[i]), 4),
             "parent": labelset.parents[i]} for i in best]


def content_of(uri: str) -> str:
    """The content hash ``seed_run`` gives an image: that of its URI's text."""
    return hashlib.sha256(uri.encode()).hexdigest()


def weights_of(model: str) -> str:
    """The digest of ``model``'s weights as its workers register them: its checkpoint's where
    ``model`` is a folder here, else a made-up one (no checkpoint to read)."""
    folder = Path(model)
    if folder.is_dir():
        return checkpoint_digest(folder, folder.parent / "digests").digest
    return hashlib.sha256(model.encode()).hexdigest()


def seed_run(url: str, uris: Sequence[str], labelset: LabelSet, *,
             failures: Mapping[str, tuple[Reason, str]] | None = None,
             labels: Mapping[str, list[dict[str, object]]] | None = None,
             file_roots: Sequence[str] = (), model: str = "test-model", source: str = "test",
             seed: int = 0, vectors: Mapping[str, np.ndarray] | None = None) -> str:
    """A finished run of ``uris``: failed with ``failures[uri]``, else done with ``labels[uri]``
    (default: random), by weights whose digest is ``weights_of(model)``. With ``vectors``: done
    images have a content (the SHA-256 of their URI) and their vector is kept as its embedding.
    Returns the run's id."""
    engine = engine_for(url)
    run_id = uuid.uuid4().hex[:16]
    save_labelset(engine, labelset)
    create_run(engine, run_id, source, model, labelset.id, file_roots)
    rng = np.random.default_rng(seed)
    failures, labels = failures or {}, labels or {}
    outcomes = []
    for uri in uris:
        if uri in failures:
            reason, error = failures[uri]
            outcomes.append(Result(Item(uri), model, labelset.id, run_id, reason=reason,
                                   error=error, weights=weights_of(model)))
        else:
            outcomes.append(Result(Item(uri), model, labelset.id, run_id, runtime="torch test",
                                   labels=labels.get(uri) or random_labels(labelset, rng),
                                   content_sha256=content_of(uri) if vectors else None,
                                   embedding=vectors.get(uri) if vectors else None,
                                   weights=weights_of(model)))
    write_results(engine, outcomes, keep_embeddings=bool(vectors))
    update_run(engine, run_id, finished=True, listed=len(uris), enqueued=len(uris))
    return run_id


def seed_kept(url: str, model: str, items: Sequence[Item], *, dim: int = 16,
              run_id: str = "seeded", contents: Sequence[str] | None = None, seed: int = 0
              ) -> list[str]:
    """Done results of ``items`` with kept normalised embeddings, as a worker of ``model``
    writes them (``contents``: their content hashes; default: made up). Returns the hashes."""
    rng = np.random.default_rng(seed)
    contents = list(contents or (sha256_of(f"{seed}-{i}".encode()) for i in range(len(items))))
    engine = engine_for(url)
    weights = weights_of(model)
    for start in range(0, len(items), 1000):
        vectors = rng.standard_normal((len(items[start:start + 1000]), dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        write_results(engine, [
            Result(item, model, "seeded", run_id=run_id, content_sha256=sha, embedding=vector,
                   labels=[{"label": "猫", "score": 0.9}], runtime="torch float32 cpu",
                   weights=weights)
            for item, sha, vector in zip(items[start:start + 1000], contents[start:start + 1000],
                                         vectors, strict=True)], keep_embeddings=True)
    return contents
