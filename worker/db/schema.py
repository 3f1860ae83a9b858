"""The tables, one engine per URL, and the one way every database call is retried."""

from __future__ import annotations

import functools
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url

from worker.core.errors import TransientError
from worker.core.redact import redact

log = logging.getLogger(__name__)
metadata = sa.MetaData()
now = sa.func.current_timestamp()
_Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Time = sa.DateTime(timezone=True)
_Hash = sa.String(64)  # sha256 hex: URIs are indexed by their hash, never by their text

labelsets = sa.Table(
    "labelsets", metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("body", _Json, nullable=False),
    sa.Column("created_at", _Time, nullable=False, server_default=now),
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("labelset_id", sa.String(16), nullable=False),
    sa.Column("started_at", _Time, nullable=False, server_default=now),
    sa.Column("finished_at", _Time),
    sa.Column("listed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("enqueued", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("skipped", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("skipped_by_reason", _Json),
    sa.Column("error", sa.Text),  # why the listing stopped early (failed, cancelled)
    sa.Column("file_roots", _Json),  # folders (and linked files) this run's chunks may read
    sa.Column("cancelled_at", _Time),  # withdrawn: its chunks are no longer to be tagged
)

FAILED = sa.text("status = 'failed'")
results = sa.Table(
    "results", metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("uri", sa.Text, nullable=False),  # without userinfo or signature (redact.py)
    sa.Column("uri_hash", _Hash, nullable=False),
    # The URI as received carried credentials or a signature: `uri` alone cannot fetch it.
    sa.Column("signed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("model", sa.Text, nullable=False),  # the TAGGER_MODEL it was served as: a name
    sa.Column("model_id", sa.SmallInteger, nullable=False),  # the weights: models.id
    sa.Column("labelset_id", sa.String(16), nullable=False),
    sa.Column("item_key", sa.Text),
    sa.Column("source_version", sa.Text),
    sa.Column("content_sha256", sa.String(64)),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("error", sa.Text),
    sa.Column("labels", _Json, nullable=False),
    sa.Column("top_label", sa.Text),
    sa.Column("top_score", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("run_id", sa.String(32)),
    sa.Column("runtime", sa.Text),  # which backend and precision computed the labels
    sa.Column("created_at", _Time, nullable=False, server_default=now),
    sa.Column("updated_at", _Time, nullable=False, server_default=now),
    sa.UniqueConstraint("uri_hash", "model_id", "labelset_id", name="uq_results_image"),
    sa.CheckConstraint("status IN ('done', 'failed')", name="ck_results_status"),
    # Copies of failing content were once stored done without labels and then skipped for ever.
    sa.CheckConstraint("status = 'failed' OR top_label IS NOT NULL",
                       name="ck_results_done_has_labels"),
    # Every index here is paid by every row written (a relabel writes 20,000 a second): content
    # is found through images, and only failures are looked up by reason.
    sa.Index("ix_results_top_label", "top_label", "top_score"),
    sa.Index("ix_results_run_status", "run_id", "status"),
    sa.Index("ix_results_failed_reason", "reason", postgresql_where=FAILED, sqlite_where=FAILED),
    # A run's gallery of one label, least confident first, a page at a time (the workbench).
    sa.Index("ix_results_run_label_score", "run_id", "top_label", "top_score", "id"),
)

# An image enqueued and not yet answered; its row blocks a second enqueue of the same image.
pending = sa.Table(
    "pending", metadata,
    sa.Column("uri_hash", _Hash, primary_key=True),
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("labelset_id", sa.String(16), primary_key=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(32)),
    sa.Column("enqueued_at", _Time, nullable=False),
    sa.Index("ix_pending_run", "run_id"),
)

# Each start of a chunk message: a poison chunk is parked after K; open rows are in flight.
deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),  # starts
    sa.Column("retries", sa.Integer, nullable=False, server_default="0"),  # granted by workers
    sa.Column("run_id", sa.String(32)),
    sa.Column("images", sa.Integer),
    sa.Column("updated_at", _Time, nullable=False, server_default=now),
    sa.Column("finished_at", _Time),
    sa.Index("ix_deliveries_open", "finished_at", "run_id"),
)

# A relabel run's range of kept embeddings not answered yet: its images count as pending.
pending_ranges = sa.Table(
    "pending_ranges", metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("lo", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hi", sa.BigInteger, nullable=False),
    sa.Column("images", sa.BigInteger, nullable=False),
    sa.Column("enqueued_at", _Time, nullable=False),
    sa.Column("scope_run", sa.String(32)),  # only this run's images (None: every image)
)

# A model is its weights: the digest of its checkpoint's files (worker/backends/weights.py),
# under a smallint id that results, kept embeddings and text embeddings are keyed by.
models = sa.Table(
    "models", metadata,
    sa.Column("id", sa.SmallInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    # The digest (64 hex digits; tests without a checkpoint use the model's name). None: a model
    # named before weights were identified (migration 0007), not used to score until a worker
    # shows that its weights are the ones that computed it (db/models.py).
    sa.Column("weights", sa.Text, unique=True),
    sa.Column("name", sa.Text, nullable=False),  # the TAGGER_MODEL it was last served as
    sa.Column("dim", sa.Integer),  # its image embeddings' width, once one is kept
    sa.Column("since", _Time, nullable=False, server_default=now),  # its first result
    sa.Column("seen_at", _Time, nullable=False, server_default=now),  # a worker's last start
)

# Each image (URI) at the content its own latest fetch found: what relabel and kept embeddings
# may believe about it, one row per image whatever the number of label sets and models.
images = sa.Table(
    "images", metadata,
    sa.Column("uri_hash", _Hash, primary_key=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("signed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("item_key", sa.Text),
    sa.Column("source_version", sa.Text),
    sa.Column("content_key", sa.BigInteger, nullable=False),  # embedding.key_of(content)
    sa.Column("content", sa.LargeBinary, nullable=False),  # SHA-256, 32 bytes
    sa.Column("updated_at", _Time, nullable=False, server_default=now),
    sa.Index("ix_images_content", "content_key"),
)

# Kept image embeddings (worker/core/embedding.py has their form), ~1 KB per image: the model
# is a smallint, the indexed key an int8, columns ordered so that no byte is padding.
embeddings = sa.Table(
    "embeddings", metadata,
    sa.Column("key", sa.BigInteger, nullable=False),
    sa.Column("model_id", sa.SmallInteger, nullable=False),
    sa.Column("sha256", sa.LargeBinary, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("model_id", "key", name="pk_embeddings"),
)

text_embeddings = sa.Table(
    "text_embeddings", metadata,
    sa.Column("model_id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("labelset_id", sa.String(16), primary_key=True),
    sa.Column("encoder", sa.String(64), primary_key=True),  # what computed them
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _Time, nullable=False, server_default=now),
)


def normalise_url(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg2 driver this project ships."""
    parsed = make_url(url)
    if parsed.drivername in {"postgres", "postgresql"}:
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


_engines: dict[str, Engine] = {}  # by normalised URL; after a fork, see below


def engine_for(url: str) -> Engine:
    """One pooled engine per URL and process."""
    url = normalise_url(url)
    if url not in _engines:
        _engines[url] = _create_engine(url)
    return _engines[url]


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Never a folder made here: a mistyped path is refused (migrate.require_database).
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping (a SELECT 1 per checkout): a dead pooled connection fails its first call,
    # which `retried` runs again on a fresh one.
    from worker.db.bulk import create_session_tables  # bulk reads the tables defined here

    engine = sa.create_engine(url, pool_size=2, max_overflow=2,
                              connect_args={"connect_timeout": 10})
    sa.event.listen(engine, "connect", create_session_tables)
    return engine


def _forget_inherited_connections() -> None:
    # A forked child (a prefork pool child) must not use the parent's pooled connections: two
    # processes on one socket garble the protocol ("error with status PGRES_TUPLES_OK"), and a
    # child killed mid-query leaves it broken for the next child. close=False: they stay the
    # parent's to use and close.
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the producer read while a worker writes; the busy timeout covers the rest.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def insert(conn: Connection, table: sa.Table) -> Any:
    """An INSERT with ON CONFLICT for this connection's dialect."""
    return (postgresql.insert(table) if conn.dialect.name == "postgresql"
            else sqlite.insert(table))


def is_transient(exc: sa.exc.DBAPIError) -> bool:
    """A lost or refused connection, a busy database, a deadlock: worth trying again."""
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "pgcode", None)
    if code:  # SQLSTATE classes: connection, rollback (deadlock), resources, shutdown
        return code[:2] in {"08", "40", "53", "57"}
    if isinstance(exc.orig, sqlite3.Error):
        return any(word in str(exc.orig) for word in ("locked", "busy"))
    # psycopg2 reports a refused or dropped connection without a SQLSTATE
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)


BATCH = 500  # keys per IN (...) list: well under SQLite's limit on bound variables


def batches(values: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


P = ParamSpec("P")
T = TypeVar("T")
TRIES = 3


def retried(func: Callable[P, T]) -> Callable[P, T]:
    """Retry a lost connection or an unreachable database in place, then raise TransientError.

    Every call wrapped here is idempotent (upserts, reads), so running it again is safe; a
    database that stays away for seconds becomes a chunk retry with the task's backoff.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(1, TRIES + 1):
            try:
                return func(*args, **kwargs)
            except sa.exc.DBAPIError as exc:
                if not is_transient(exc):
                    raise
                message = redact(str(exc.orig or exc).strip().splitlines()[0])
                if attempt == TRIES:
                    raise TransientError(f"database unavailable: {message}") from exc
                log.warning("database call %s failed (%s); retrying", func.__name__, message)
                time.sleep(0.5 * 2 ** attempt * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    return wrapper


# The workbench's tables, on this metadata (imported last: they are built from it).
from worker.db import review_tables  # noqa: E402, F401
