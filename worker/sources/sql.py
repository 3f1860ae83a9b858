"""A catalogue database: rows of (key, image URL[, version]) from one read-only SELECT."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from worker.core.contract import Item
from worker.core.errors import ConfigError, ItemError, Reason, Skip, SourceError
from worker.core.redact import redact
from worker.core.settings import database_url
from worker.db.schema import engine_for
from worker.sources import Budget, Listed, Skipped, Source


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


def check_single_select(query: str) -> None:
    """One SELECT and nothing else, by PostgreSQL's own parser.

    A second statement could COMMIT the read-only transaction and write in a new one.
    """
    import pglast

    try:
        statements = pglast.parse_sql(query)
    except pglast.parser.ParseError as exc:
        raise SourceError(f"the catalogue query does not parse: {exc}") from exc
    if len(statements) != 1 or type(statements[0].stmt).__name__ != "SelectStmt":
        raise SourceError("the catalogue query must be a single SELECT statement "
                          f"(got {len(statements)} statements)")


class SqlSource(Source):
    """``postgresql://`` and ``sqlite://`` catalogue databases (listing only)."""

    def listing(self, location: str, query: str | sa.Select | None = None, batch: int = 5000,
                **_: Any) -> Iterator[Listed]:
        """Rows through a server-side cursor in a read-only transaction, ``batch`` at a time."""
        try:
            database_url("the catalogue database URL", location)
        except ConfigError as exc:
            raise SourceError(str(exc)) from exc
        if query is None:
            raise SourceError("a catalogue database needs --query or --table")
        engine = engine_for(location)
        if isinstance(query, str) and engine.dialect.name == "postgresql":
            check_single_select(query)
        statement = sa.text(query) if isinstance(query, str) else query
        try:
            with engine.connect().execution_options(**_read_only(engine)) as conn, \
                    _sqlite_query_only(conn):
                rows = conn.execution_options(stream_results=True, yield_per=batch).execute(
                    statement)
                for row in rows:
                    yield _entry(row)
        except sa.exc.SQLAlchemyError as exc:
            reason = getattr(exc, "orig", None) or exc
            raise SourceError(f"catalogue query failed: {type(reason).__name__}: "
                              f"{redact(str(reason)).strip().splitlines()[0]}") from exc

    def describe(self, location: str, query: str | sa.Select | None = None, **_: Any) -> str:
        return f"sql: {describe(query)}" if query is not None else redact(location)

    def fetch(self, uri: str, budget: Budget) -> bytes:
        raise ItemError(Reason.BAD_URI, "a database URL is a catalogue to list, not an image")


@contextlib.contextmanager
def _sqlite_query_only(conn: sa.Connection) -> Iterator[None]:
    """SQLite has no read-only transactions; its connection-wide switch is put back after."""
    if conn.dialect.name != "sqlite":
        yield
        return
    conn.exec_driver_sql("PRAGMA query_only = ON")
    try:
        yield
    finally:
        conn.exec_driver_sql("PRAGMA query_only = OFF")


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
