"""Items sent with a content hash: scored from their kept embedding, never believed on their word.

An item's own latest fetch, of its version, must have found the content its message claims; its
URI then goes through the checks a fetch would make (in a decode process, as a `Check`), and
only the items that pass are scored from the kept embedding, without a fetch.
"""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np

from worker.core.embedding import damaged
from worker.core.errors import ItemError
from worker.loop.dedupe import KnownContent
from worker.loop.work import Batch, Work
from worker.prep import Check
from worker.sources import check_uri

Kept = dict[int, tuple[str, np.ndarray]]  # a work's index -> (its content, its kept embedding)


def confirmed(known: KnownContent, works: list[Work]) -> Kept:
    """The items that can be scored from a kept embedding; an item whose kept embedding is
    damaged fails alone."""
    claimed = [w for w in works if w.item.sha256]
    if not claimed:
        return {}
    fetched = known.fetched(w.item for w in claimed)
    believed = {i: w.item.sha256 for i, w in enumerate(works)
                if w.item.sha256 and fetched.get(w.item.uri) == w.item.sha256}
    vectors = known.embeddings(set(believed.values()))
    for index, sha in believed.items():
        if sha in vectors.corrupt:  # this image alone fails
            works[index].sha256 = sha
            works[index].error = damaged(sha, vectors.corrupt[sha])
    return {i: (sha, vectors[sha]) for i, sha in believed.items() if sha in vectors}


def requests(works: list[Work], kept: Kept) -> list[tuple[int, str | bytes | Check]]:
    """What the decode processes are asked: to fetch each item, or, for one a kept embedding
    scores, to make the same checks without fetching it. A URI no source takes fails here."""
    todo: list[tuple[int, str | bytes | Check]] = []
    for index, work in enumerate(works):
        if work.error is not None:  # its kept embedding is damaged
            continue
        try:
            check_uri(work.item.uri)
            todo.append((index, Check(work.item.uri) if index in kept else work.item.uri))
        except ItemError as exc:
            work.error = exc
    return todo


def batch(works: list[Work], kept: Kept, checked: list[int]) -> Batch:
    """The items whose URIs passed the checks, as a batch whose embeddings are ready."""
    out = Batch(kept=True)
    vectors = {}
    for index in checked:
        sha, vector = kept[index]
        works[index].sha256 = sha
        out.add(sha, works[index])
        vectors[sha] = vector
    ready: Future[np.ndarray] = Future()
    ready.set_result(np.stack([vectors[sha] for sha in out.shas]) if out.shas else
                     np.empty((0, 0), np.float32))
    out.embeddings = ready
    return out
