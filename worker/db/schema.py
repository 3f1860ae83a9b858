"""One engine per URL, and the one way every database call is retried (the tables: tables.py)."""

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
from worker.db import review_tables  # noqa: F401 (the workbench's tables, on the same metadata)
from worker.db.bulk import create_session_tables
from worker.db.tables import (  # noqa: F401 (the tables, where callers have always found them)
    FAILED,
    deliveries,
    embeddings,
    images,
    labelsets,
    metadata,
    models,
    now,
    pending,
    pending_ranges,
    results,
    runs,
    text_embeddings,
)

log = logging.getLogger(__name__)
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

