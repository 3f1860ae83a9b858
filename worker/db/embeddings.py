"""The kept embeddings store: write them with a chunk's results, find them by content, read ranges.

Rows are keyed by (model id, key) (worker/core/embedding.py): a model is its weights
(worker/db/models.py); every read checks the full SHA-256 as well. Writes never replace a kept
embedding: the first one computed for a content stays, so that every label set scored from it
agrees.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.core.embedding import KEY_MAX, KEY_MIN, key_of, pack, unpack
from worker.core.errors import ConfigError, TransientError
from worker.core.redact import redact
from worker.db import bulk, models
from worker.db.models import Model
from worker.db.schema import (
    batches,
    embeddings,
    images,
    insert,
    is_transient,
    results,
    retried,
)

if TYPE_CHECKING:
    import numpy as np

QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a statement ended by statement_timeout


def keep(conn: Connection, model: Model, vectors: Mapping[str, np.ndarray]) -> None:
    """Store embeddings by content SHA-256 (hex) under ``model``, in the caller's transaction;
    those already kept stay."""
    rows = [{"key": key_of(raw), "model_id": model.id, "sha256": raw, "vector": pack(vector)}
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
def lookup(engine: Engine, model: Model, hashes: Iterable[str]) -> Kept:
    """The kept embeddings of these content hashes (hex); those not kept are absent."""
    wanted = {bytes.fromhex(sha) for sha in hashes}
    model = models.with_width(engine, model) if wanted else model
    if model.dim is None:
        return Kept()
    with engine.connect() as conn:
        rows = _kept_rows(conn, model.id, wanted, embeddings.c.vector)
    vectors, corrupt = unpack([bytes(row.vector) for row in rows], model.dim)
    shas = [bytes(row.sha256).hex() for row in rows]
    return Kept({sha: vectors[i] for i, sha in enumerate(shas) if i not in corrupt},
                {shas[i]: problem for i, problem in corrupt.items()})


@retried
def forget(engine: Engine, model: Model, hashes: Iterable[str]) -> None:
    """Remove the kept embeddings of these contents (found damaged): the next tagging of
    their images keeps new ones."""
    raw = sorted({bytes.fromhex(sha) for sha in hashes})
    if not raw:
        return
    with engine.begin() as conn:
        for part in batches(raw):
            conn.execute(embeddings.delete().where(
                embeddings.c.model_id == model.id,
                embeddings.c.key.in_([key_of(sha) for sha in part]),
                embeddings.c.sha256.in_(part)))


def kept_hashes(conn: Connection, model_id: int, hashes: Iterable[str]) -> set[str]:
    """Which of these content hashes (hex) have a kept embedding under the model ``model_id``."""
    wanted = {bytes.fromhex(sha) for sha in hashes}
    if not wanted:
        return set()
    return {bytes(row.sha256).hex() for row in _kept_rows(conn, model_id, wanted)}


@dataclass(frozen=True)
class Scope:
    """Which images a relabel scores: those with a kept embedding under ``model``, or only the
    images of ``run``."""

    model: Model
    run: str | None = None


def _hex(conn: Connection, column: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return sa.func.encode(column, "hex")
    return sa.func.lower(sa.func.hex(column))


def images_query(conn: Connection, scope: Scope, lo: int, hi: int) -> Any:
    """Each image whose content, as its own latest fetch found it, has a kept embedding with a
    key in [lo, hi]: its URI, its hash, signed, key, version and content (the first six: a
    result's own columns, writes.SCORED), that embedding, the model's name. One row per image
    from ``images``: results, however many label sets they hold, are not read (with
    ``scope.run``: only to ask whether the run tagged the image)."""
    i, e = images, embeddings
    query = (sa.select(i.c.uri, i.c.uri_hash, i.c.signed, i.c.item_key, i.c.source_version,
                       _hex(conn, i.c.content).label("content_sha256"), e.c.vector,
                       sa.literal(scope.model.name).label("model"))
             .select_from(e.join(i, sa.and_(i.c.content_key == e.c.key,
                                            i.c.content == e.c.sha256)))
             .where(e.c.model_id == scope.model.id, e.c.key.between(lo, hi)))
    if scope.run:
        r = results
        return query.where(sa.exists().where(r.c.uri_hash == i.c.uri_hash,
                                             r.c.run_id == scope.run, r.c.status == "done"))
    return query


def read_images(engine: Engine, scope: Scope, lo: int = KEY_MIN, hi: int = KEY_MAX,
                batch: int = 5000, timeout: float = 60
                ) -> Iterator[tuple[list[sa.Row], np.ndarray, dict[int, str]]]:
    """The images of a key range in batches (a server-side cursor on PostgreSQL): their rows,
    their embeddings (float16), and which rows' stored embeddings are corrupt (their vectors
    zeros), with what is wrong. A lost database is a TransientError; a statement that runs
    over ``timeout`` seconds (TAGGER_READ_TIMEOUT) a ConfigError that says so."""
    width = models.with_width(engine, scope.model).dim
    if width is None:  # nothing was ever kept under these weights
        return
    try:
        with engine.connect() as conn:
            limit_read(conn, timeout)
            stream = conn.execution_options(stream_results=True, yield_per=batch).execute(
                images_query(conn, scope, lo, hi))
            for rows in stream.partitions(batch):
                yield rows, *unpack([bytes(row.vector) for row in rows], width)
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "pgcode", None) == QUERY_CANCELED:
            raise ConfigError(
                f"reading the kept embeddings of keys {lo}..{hi} took over TAGGER_READ_TIMEOUT="
                f"{timeout:g} s; run ANALYZE on the results database, or raise the setting"
            ) from None
        if not is_transient(exc):
            raise
        raise TransientError(f"database unavailable: {redact(str(exc.orig or exc))}") from exc


def limit_read(conn: Connection, timeout: float) -> None:
    """The read's plan and time limit, for the transaction ``conn`` is in (PostgreSQL)."""
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}")
    # One index lookup per image, never a scan of a table: cost in proportion to the range, a
    # core per range (the fleet runs ranges side by side), and no JIT compiling per range.
    for setting in ("enable_hashjoin", "enable_mergejoin", "jit"):
        conn.exec_driver_sql(f"SET LOCAL {setting} = off")
    conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")


def refresh_statistics(engine: Engine) -> None:
    """Let PostgreSQL know the tables relabel reads: without statistics (tables just filled,
    autovacuum off or behind) it may plan a scan of a whole table for each range. A role that
    does not own the tables gets a warning, not an error."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE embeddings, images")


def estimate_images(engine: Engine, scope: Scope) -> int:
    """About how many images a relabel of ``scope`` scores: kept contents, or the run's images."""
    with engine.connect() as conn:
        if scope.run:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(results).where(
                results.c.run_id == scope.run, results.c.status == "done")) or 0)
        return int(conn.scalar(sa.select(sa.func.count()).select_from(embeddings).where(
            embeddings.c.model_id == scope.model.id)) or 0)
