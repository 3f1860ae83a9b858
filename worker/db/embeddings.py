"""The kept embeddings store: write them with a chunk's results, find them by content, read ranges.

Rows are keyed by (model id, key) (worker/core/embedding.py); every read checks the full
SHA-256 as well. Writes never replace a kept embedding: the first one computed for a content
stays, so that every label set scored from it agrees.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.core.embedding import KEY_MAX, KEY_MIN, key_of, pack, unpack
from worker.core.errors import TransientError
from worker.core.redact import redact
from worker.db import bulk
from worker.db.schema import (
    batches,
    embedding_models,
    embeddings,
    insert,
    is_transient,
    results,
    retried,
)

if TYPE_CHECKING:
    import numpy as np

_ids: dict[tuple[str, str], tuple[int, int]] = {}  # (database URL, model) -> (id, dim)
_ids_lock = threading.Lock()


@retried
def model_id(engine: Engine, model: str, dim: int | None = None) -> tuple[int, int] | None:
    """(id, dim) of a model's kept embeddings; with ``dim``, the model is added if it is new
    (in a transaction of its own: an id is remembered only once it is committed)."""
    cache = (engine.url.render_as_string(), model)
    with _ids_lock:
        if cache in _ids:
            return _ids[cache]
    with engine.begin() as conn:
        if dim is not None:
            conn.execute(insert(conn, embedding_models).values(model=model, dim=dim)
                         .on_conflict_do_nothing(index_elements=["model"]))
        row = conn.execute(sa.select(embedding_models.c.id, embedding_models.c.dim)
                           .where(embedding_models.c.model == model)).first()
    if row is None:
        return None
    with _ids_lock:
        _ids[cache] = (int(row.id), int(row.dim))
    return _ids[cache]


def keep(conn: Connection, model: tuple[int, int] | None, vectors: Mapping[str, np.ndarray]
         ) -> None:
    """Store embeddings by content SHA-256 (hex) under ``model`` (its id and width, from
    ``model_id`` with a width), in the caller's transaction; those already kept stay."""
    assert model is not None, "a model given with its width is always registered"
    rows = [{"key": key_of(raw), "model_id": model[0], "sha256": raw, "vector": pack(vector)}
            for raw, vector in ((bytes.fromhex(sha), v) for sha, v in vectors.items())]
    if not rows:
        return
    if bulk.uses_copy(conn):
        bulk.keep_embeddings(conn, rows)
    else:
        conn.execute(insert(conn, embeddings).on_conflict_do_nothing(
            index_elements=["model_id", "key"]), rows)


def _kept_rows(conn: Connection, model: int, wanted: set[bytes], *columns: Any) -> list[sa.Row]:
    """The kept rows of these content hashes, the full hash checked (keys may collide)."""
    rows: list[sa.Row] = []
    for part in batches(sorted(key_of(raw) for raw in wanted)):
        rows += conn.execute(sa.select(embeddings.c.sha256, *columns).where(
            embeddings.c.model_id == model, embeddings.c.key.in_(part))).all()
    return [row for row in rows if bytes(row.sha256) in wanted]


class Kept(dict[str, "np.ndarray"]):
    """Kept embeddings (float16) by content hash (hex); ``corrupt``: the contents whose stored
    embedding is damaged, with what is wrong with it."""

    def __init__(self, vectors: Mapping[str, np.ndarray] | None = None,
                 corrupt: Mapping[str, str] | None = None) -> None:
        super().__init__(vectors or {})
        self.corrupt = dict(corrupt or {})


@retried
def lookup(engine: Engine, model: str, hashes: Iterable[str]) -> Kept:
    """The kept embeddings of these content hashes (hex); those not kept are absent."""
    wanted = {bytes.fromhex(sha) for sha in hashes}
    found = model_id(engine, model) if wanted else None
    if found is None:
        return Kept()
    with engine.connect() as conn:
        rows = _kept_rows(conn, found[0], wanted, embeddings.c.vector)
    vectors, corrupt = unpack([bytes(row.vector) for row in rows], found[1])
    shas = [bytes(row.sha256).hex() for row in rows]
    return Kept({sha: vectors[i] for i, sha in enumerate(shas) if i not in corrupt},
                {shas[i]: problem for i, problem in corrupt.items()})


@retried
def forget(engine: Engine, model: str, hashes: Iterable[str]) -> None:
    """Remove the kept embeddings of these contents (found damaged): the next tagging of
    their images keeps new ones."""
    found = model_id(engine, model)
    raw = sorted({bytes.fromhex(sha) for sha in hashes})
    if found is None or not raw:
        return
    with engine.begin() as conn:
        for part in batches(raw):
            conn.execute(embeddings.delete().where(
                embeddings.c.model_id == found[0],
                embeddings.c.key.in_([key_of(sha) for sha in part]),
                embeddings.c.sha256.in_(part)))


def kept_hashes(conn: Connection, model: str, hashes: Iterable[str]) -> set[str]:
    """Which of these content hashes (hex) have a kept embedding under ``model``."""
    wanted = {bytes.fromhex(sha) for sha in hashes}
    found = model_id(conn.engine, model) if wanted else None
    if found is None:
        return set()
    return {bytes(row.sha256).hex() for row in _kept_rows(conn, found[0], wanted)}


@dataclass(frozen=True)
class Scope:
    """Which images a relabel scores: this model's, or only the images of ``run``."""

    model: str
    run: str | None = None


def _hex(conn: Connection, column: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return sa.func.encode(column, "hex")
    return sa.func.lower(sa.func.hex(column))


def _only_filter(column: Any) -> Any:
    """``column`` as a filter, never an index to search by: ``status = 'done'`` or a run's rows
    match most of the table, and SQLite (no statistics) would search them per kept embedding."""
    return column.concat("")


def images_query(conn: Connection, scope: Scope, model_id: int, lo: int, hi: int) -> Any:
    """Each image whose content has a kept embedding with a key in [lo, hi], at its newest done
    result (with ``scope.run``: as that run's result has it): its URI, key, version, content,
    and that embedding. Driven by the embeddings' key range, one index lookup per image."""
    r, newer = results.alias("r"), results.alias("newer")
    e = embeddings
    query = (sa.select(r.c.uri, r.c.uri_hash, r.c.signed, r.c.item_key, r.c.source_version,
                       r.c.content_sha256, r.c.model, e.c.vector)
             .select_from(e.join(r, r.c.content_sha256 == _hex(conn, e.c.sha256)))
             .where(e.c.model_id == model_id, e.c.key.between(lo, hi), r.c.model == scope.model,
                    _only_filter(r.c.status) == "done"))
    if scope.run:
        return query.where(_only_filter(r.c.run_id) == scope.run)
    return query.where(~sa.exists().where(
        newer.c.uri_hash == r.c.uri_hash, newer.c.model == r.c.model,
        _only_filter(newer.c.status) == "done",
        sa.or_(newer.c.updated_at > r.c.updated_at,
               sa.and_(newer.c.updated_at == r.c.updated_at, newer.c.id > r.c.id))))


def read_images(engine: Engine, scope: Scope, lo: int = KEY_MIN, hi: int = KEY_MAX,
                batch: int = 5000) -> Iterator[tuple[list[sa.Row], np.ndarray, dict[int, str]]]:
    """The images of a key range in batches (a server-side cursor on PostgreSQL): their rows,
    their embeddings (float16), and which rows' stored embeddings are corrupt (their vectors
    zeros), with what is wrong. A lost database is a TransientError."""
    try:
        found = model_id(engine, scope.model)
        if found is None:
            return
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # One index lookup per image, never a hash of every result: cost in proportion
                # to the range, one core per range (the fleet runs ranges side by side), and
                # no JIT compiling per range.
                for setting in ("enable_hashjoin", "enable_mergejoin", "jit"):
                    conn.exec_driver_sql(f"SET LOCAL {setting} = off")
                conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
            stream = conn.execution_options(stream_results=True, yield_per=batch).execute(
                images_query(conn, scope, found[0], lo, hi))
            for rows in stream.partitions(batch):
                yield rows, *unpack([bytes(row.vector) for row in rows], found[1])
    except sa.exc.DBAPIError as exc:
        if not is_transient(exc):
            raise
        raise TransientError(f"database unavailable: {redact(str(exc.orig or exc))}") from exc


def refresh_statistics(engine: Engine) -> None:
    """Let PostgreSQL know the tables relabel reads: without statistics (tables just filled,
    autovacuum off or behind) it takes a content hash for unselective and plans a scan of every
    result for each range. A role that does not own the tables gets a warning, not an error."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE embeddings, results")


def estimate_images(engine: Engine, scope: Scope) -> int:
    """About how many images a relabel of ``scope`` scores: kept contents, or the run's images."""
    found = model_id(engine, scope.model)
    with engine.connect() as conn:
        if scope.run:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(results).where(
                results.c.run_id == scope.run, results.c.status == "done")) or 0)
        return int(conn.scalar(sa.select(sa.func.count()).select_from(embeddings).where(
            embeddings.c.model_id == found[0])) or 0) if found else 0
