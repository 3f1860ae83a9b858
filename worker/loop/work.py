"""One image on its way through the loop, and what its decode process's answer makes of it."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.core.contract import Item
from worker.core.errors import ItemError, Reason, TransientError
from worker.loop.dedupe import Labels
from worker.prep import Prepared


@dataclass
class Work:
    """One item on its way through the loop."""

    item: Item
    sha256: str | None = None
    prepared: Any = None
    labels: Labels | None = None
    error: ItemError | None = None
    transient: TransientError | None = None  # to be tried again in a later delivery
    embedding: np.ndarray | None = None  # computed here by the image tower: kept (float32, (D,))
    kept: bool = False  # scored from a kept embedding: checked as for a fetch, not fetched


@dataclass
class Batch:
    """Distinct contents on their way to be scored, and the works of each: from the forward
    thread (``embeddings`` pending), or from their kept embeddings (``kept``: ready)."""

    shas: list[str] = field(default_factory=list)
    works: dict[str, list[Work]] = field(default_factory=dict)
    embeddings: Future[np.ndarray] | None = None
    kept: bool = False

    def add(self, sha: str, work: Work) -> None:
        if sha not in self.works:
            self.works[sha] = []
            self.shas.append(sha)
        self.works[sha].append(work)


def received(work: Work, prepared: Prepared, final: bool) -> bool:
    """Take one answer from a decode process; True if the image is ready to score. A transient
    failure is tried again in a later delivery, or, on the ``final`` one, the image's failure."""
    work.sha256 = prepared.sha256
    outcome = prepared.outcome
    if isinstance(outcome, TransientError):
        if final:
            work.error = ItemError(Reason.TRANSIENT, f"gave up after the last retry: {outcome}")
        else:
            work.transient = outcome
    elif isinstance(outcome, ItemError):
        work.error = outcome
    else:
        work.prepared = outcome
        return True
    return False


def same_outcome_for_same_content(works: list[Work]) -> None:
    """Identical bytes under several URIs end alike: labels if any copy got them (a copy that
    ran out of time under load is no reason to fail the others), else the first copy's error."""
    labels: dict[str, Labels] = {}
    errors: dict[str, ItemError] = {}
    for work in works:
        if work.sha256 and work.labels is not None:
            labels.setdefault(work.sha256, work.labels)
        elif work.sha256 and work.error is not None:
            errors.setdefault(work.sha256, work.error)
    for work in works:
        if not work.sha256 or work.transient is not None:
            continue
        if work.sha256 in labels:
            work.labels, work.error = labels[work.sha256], None
        elif work.sha256 in errors:
            work.error = errors[work.sha256]
