"""A run's results written straight to the database, as the workers would have written them."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence

import numpy as np

from worker.core.contract import Item, Result
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


def weights_of(model: str) -> str:
    """The digest a seeded run's weights have (a made-up one: no checkpoint is read)."""
    return hashlib.sha256(model.encode()).hexdigest()


def seed_run(url: str, uris: Sequence[str], labelset: LabelSet, *,
             failures: Mapping[str, tuple[Reason, str]] | None = None,
             labels: Mapping[str, list[dict[str, object]]] | None = None,
             file_roots: Sequence[str] = (), model: str = "test-model", source: str = "test",
             seed: int = 0) -> str:
    """A finished run of ``uris``: failed with ``failures[uri]``, else done with ``labels[uri]``
    (default: random), by weights whose digest is ``weights_of(model)``. Returns the run's id."""
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
                                   weights=weights_of(model)))
    write_results(engine, outcomes)
    update_run(engine, run_id, finished=True, listed=len(uris), enqueued=len(uris))
    return run_id
