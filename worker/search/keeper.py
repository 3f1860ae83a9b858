"""The index kept current with the kept embeddings: built once, then only what is new is added.

Kept embeddings are only ever added (worker/db/embeddings.py never replaces one), so a count
that matches the index's says it is current. Otherwise the keys differ: the new ones are read
and added, any gone removed, and the new generation saved under a lock (one writer per index;
readers keep searching their snapshot meanwhile). An index outgrown, damaged or missing is
built again from the table.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from worker.core.errors import ConfigError
from worker.core.redact import stored_uri
from worker.search.index import Index, sample_size
from worker.search.store import Store

Note = Callable[[str], None]


class NothingKept(ConfigError):
    """No kept embeddings to search."""


def index_name(database_url: str, model: str) -> str:
    """One index per database and weights (``model``: their digest), named without the
    database's credentials."""
    return hashlib.sha256(f"{stored_uri(database_url)}\0{model}".encode()).hexdigest()[:16]


@contextlib.contextmanager
def writing(folder: Path, name: str, note: Note) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note("waiting for another process that is updating the search index")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(store: Store, count: int, note: Note) -> Index:
    """A new index of every kept embedding; an IVF trained on the first rows (in key order,
    which is content-hash order: a uniform random sample)."""
    found = store.model_id()
    assert found is not None
    need, sample, keys = sample_size(count), [], []
    index: Index | None = None if need else Index.empty(found[1], count)
    for batch_keys, batch in store.scan():
        if index is None:
            keys.append(batch_keys)
            sample.append(batch)
            if sum(len(s) for s in sample) < need:
                continue
            index = Index.empty(found[1], count, np.concatenate(sample)[:need])
            batch_keys, batch = np.concatenate(keys), np.concatenate(sample)
        index.add(batch_keys, batch)
        if index.count % 200_000 < len(batch_keys):
            note(f"indexed {index.count:,} of {count:,} kept embeddings")
    if index is None:  # fewer rows than counted (some deleted meanwhile)
        index = Index.empty(found[1], 0)
        if keys:
            index.add(np.concatenate(keys), np.concatenate(sample))
    return index


def current(store: Store, folder: Path, name: str, note: Note,
            loaded: Index | None = None) -> Index:
    """The index (memory-mapped) holding exactly the table's keys, updated or built first."""
    count = store.count()
    if count == 0:
        raise NothingKept("no kept embeddings to search: tag images first (`producer tag "
                          "FOLDER`), with TAGGER_KEEP_EMBEDDINGS on (the default)")
    index = loaded or Index.load(folder, name)
    if index is not None and index.count == count:
        return index
    with writing(folder, name, note):
        index = Index.load(folder, name, writable=True)
        if index is not None and index.count == count and not index.outgrown():
            return Index.load(folder, name) or index  # saved by another while this one waited
        if index is None or index.outgrown() or abs(count - index.count) > index.count:
            note(f"building the search index over {count:,} kept embeddings "
                 "(once: later runs only add to it)")
            index = build(store, count, note)
        elif index.count != count:
            keys = store.keys()
            new, gone = np.setdiff1d(keys, index.keys), np.setdiff1d(index.keys, keys)
            note(f"adding {len(new):,} new kept embeddings to the search index"
                 + (f", removing {len(gone):,}" if len(gone) else ""))
            index.remove(gone)
            index.add(*store.vectors(new))
        index.save(folder, name)
    return Index.load(folder, name) or index


def after_run(store: Store, folder: Path, name: str, note: Note) -> None:
    """After a run: an index that exists takes the run's new embeddings now (a missing one is
    built by the first search). Derived data: a failure here is a note, never the run's."""
    if Index.pointed(folder, name) is None:
        return
    try:
        current(store, folder, name, note)
    except Exception as exc:  # the next search tries again; the run's results are whole
        note(f"search index not updated ({type(exc).__name__}: {exc}); the next search "
             "updates it")
