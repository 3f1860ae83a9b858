"""A catalogue database: rows of (key, image URL[, version]) from one read-only SELECT."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from worker.core.contract import Item
from worker.core.errors import ConfigError, ItemError, Reason, Skip, SourceError
from worker.core.redact import redact
from worker.core.settings import database_url
from worker.db.schema import normalise_url
from worker.sources import Budget, Listed, Skipped, Source
from worker.sources.sql_guard import check_select, limit_problem, postgresql_limits, sqlite_limits


def table_query(table: str, key_column: str, url_column: str,
                version_column: str | None = None) -> sa.Select:
    """The query for ``--table``: ``schema.table`` and column names become quoted identifiers.

    Names are exact (case-sensitive) and never pasted into SQL text, so a name cannot carry SQL.
    """
    schema, _, name = table.rpartition(".")
    if not name or any(not part for part in (key_column, url_column, version_column or "x")):
        raise SourceError(f"bad table or column name in --table {table!r}")
    columns = [sa.column(key_column), sa.column(url_column)]
    if version_column:
        columns.append(sa.column(version_column))
    source = sa.table(name, *columns, schema=schema or None)
    return sa.select(*columns).select_from(source).order_by(columns[0])


def describe(query: str | sa.Select) -> str:
    """The SQL of a listing, as recorded on its run."""
    if isinstance(query, str):
        return query
    return str(query.compile(dialect=postgresql.dialect()))


class SqlSource(Source):
    """``postgresql://`` and ``sqlite://`` catalogue databases (listing only)."""

    def listing(self, location: str, query: str | sa.Select | None = None, batch: int = 5000,
                **table: Any) -> Iterator[Listed]:
        """Rows through a server-side cursor in a read-only transaction, ``batch`` at a time,
        each step under TAGGER_CATALOGUE_TIMEOUT; ``table``: --table and its columns."""
        try:
            database_url("the catalogue database URL", location)
        except ConfigError as exc:
            raise SourceError(str(exc)) from exc
        query = _query(query, **table)
        engine = catalogue_engine(location)
        if isinstance(query, str) and engine.dialect.name == "postgresql":
            check_select(query)
        statement = sa.text(query) if isinstance(query, str) else query
        seconds = self.settings.part("catalogue").timeout
        try:
            with engine.connect().execution_options(**_read_only(engine)) as conn, \
                    _limits(conn, seconds) as restart:
                restart()
                rows = conn.execution_options(stream_results=True, yield_per=batch).execute(
                    statement)
                for row in _paced(rows, restart):
                    yield _entry(row)
        except sa.exc.SQLAlchemyError as exc:
            reason = getattr(exc, "orig", None) or exc
            raise SourceError(limit_problem(reason, seconds) or (
                f"catalogue query failed: {type(reason).__name__}: "
                f"{redact(str(reason)).strip().splitlines()[0]}")) from exc

    def describe(self, location: str, query: str | sa.Select | None = None, **table: Any
                 ) -> str:
        if query is None and not table.get("table"):
            return redact(location)
        return redact(f"sql: {describe(_query(query, **table))}")

    def check(self, uri: str, budget: Budget) -> None:
        raise ItemError(Reason.BAD_URI, "a database URL is a catalogue to list, not an image")


def _query(query: str | sa.Select | None, table: str | None = None, key_column: str = "id",
           url_column: str = "image_url", version_column: str | None = None, **_: Any
           ) -> str | sa.Select:
    """--query as given, or --table's query; SourceError if neither is."""
    if query is not None:
        return query
    if table:
        return table_query(table, key_column, url_column, version_column)
    raise SourceError("a catalogue database needs --query or --table")


@contextlib.contextmanager
def _limits(conn: sa.Connection, seconds: int) -> Iterator[Callable[[], None]]:
    """The time limit (and, on SQLite, read-only mode); yields what restarts the clock."""
    if conn.dialect.name == "sqlite":
        with sqlite_limits(conn, seconds) as restart:
            yield restart
        return
    postgresql_limits(conn, seconds)  # the server's own clock: nothing to restart
    yield lambda: None


def _paced(rows: Iterator[sa.Row], restart: Callable[[], None]) -> Iterator[sa.Row]:
    """The rows, with the clock restarted before each is asked for."""
    iterator = iter(rows)
    while True:
        restart()
        row = next(iterator, None)
        if row is None:
            return
        yield row


def catalogue_engine(url: str) -> sa.Engine:
    """An engine of the listing's own, not the results database's ``engine_for``: that one
    sets up its connections to write (a session table, SQLite's WAL journal), which a
    SELECT-only role, a read-only replica or someone else's SQLite file must not see."""
    options = {"timeout": 60} if url.startswith("sqlite") else {"connect_timeout": 10}
    return sa.create_engine(normalise_url(url), poolclass=sa.pool.NullPool,
                            connect_args=options)


def _read_only(engine: sa.Engine) -> dict[str, Any]:
    # A --query that would write to the catalogue (nextval(), a writing function) fails instead.
    return {"postgresql_readonly": True} if engine.dialect.name == "postgresql" else {}


def _entry(row: sa.Row) -> Listed:
    if len(row) < 2:
        raise SourceError("the query must return (key, image_url[, version]) columns")
    key, url = row[0], row[1]
    if url is None or url == "":
        return Skipped(Skip.NO_URL, f"key {key}")
    version = str(row[2]) if len(row) > 2 and row[2] is not None else None
    return Item(uri=str(url), key=None if key is None else str(key), version=version)
