"""The index kept current with the kept embeddings: built once, then only what is new is added.

Kept embeddings are added, and removed only when found damaged (worker/db/embeddings.py), so
a row count that matches the one the index was last brought up to says it is current.
Otherwise, on SQLite, the rows written after the last row it read are read (rowids grow with
each insert; the row count up to there says whether any went); elsewhere, or when rows went,
every key is compared. What is new goes into the delta, saved under a lock (one writer per
index; readers keep searching their snapshot meanwhile); a delta past FOLD_AT is folded into
the main index. An index outgrown, damaged or missing is built again from the table.
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
from worker.search import delta as deltas
from worker.search.index import Index
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
    """A new index of every kept embedding, read in key order a batch at a time."""
    found = store.model_id()
    assert found is not None
    rowid, key, rows = store.mark()  # before the read: rows after it are read again later
    index = Index.empty(found[1], count)
    for keys, vectors in store.scan():
        index.add(keys, vectors)
        if index.count % 200_000 < len(keys):
            note(f"indexed {index.count:,} of {count:,} kept embeddings")
    index.meta.update(rowid=rowid, key=key, rows=rows if rowid else count)
    return index


def current(store: Store, folder: Path, name: str, note: Note,
            loaded: Index | None = None) -> Index:
    """The index holding the table's kept embeddings, updated or built first."""
    count = store.count()
    if count == 0:
        raise NothingKept("no kept embeddings to search: tag images first (`producer tag "
                          "FOLDER`), with TAGGER_KEEP_EMBEDDINGS on (the default)")
    index = loaded or Index.load(folder, name)
    if index is not None and index.meta.get("rows") == count:
        return index
    with writing(folder, name, note):
        index = Index.load(folder, name, index)
        if index is not None and index.meta.get("rows") == count and not index.outgrown():
            return index  # saved by another while this one waited
        if index is None or index.outgrown() or abs(count - index.count) > index.count:
            note(f"building the search index over {count:,} kept embeddings "
                 "(once: later runs only add to it)")
            index = build(store, count, note)
            index.save(folder, name)
            return index
        update(store, index, count, note)
        index.save(folder, name, main=bool(index.meta.get("folded")))
    return index


def update(store: Store, index: Index, count: int, note: Note) -> None:
    """What is new since the index's last update into its delta: the rows written after the
    last one it read (SQLite), or else the keys it lacks; keys gone are left out."""
    arrivals = (store.since(int(index.meta["rowid"]), int(index.meta["key"]))
                if index.meta.get("rowid") else None)
    if arrivals is not None and arrivals.upto == index.meta["rows"] + arrivals.rows:
        new = ~np.isin(arrivals.keys, index.keys)
        keys, vectors, gone = arrivals.keys[new], arrivals.vectors[new], np.zeros(0, np.int64)
        index.meta.update(rowid=arrivals.rowid, key=arrivals.key, rows=arrivals.upto)
    else:  # rows went (or no order to read by): compare every key
        rowid, key, rows = store.mark()
        table = store.keys()
        gone = np.setdiff1d(index.keys, table)
        keys, vectors = store.vectors(np.setdiff1d(table, index.keys))
        index.meta.update(rowid=rowid, key=key, rows=rows if rowid else len(table))
    note(f"adding {len(keys):,} new kept embeddings to the search index"
         + (f", removing {len(gone):,}" if len(gone) else ""))
    if index.kind == "hnsw" and len(index.delta) + len(keys) > deltas.FOLD_AT:
        index.writable()  # the main index is folded into: read whole, not mapped
    index.change(keys, vectors, gone)


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
