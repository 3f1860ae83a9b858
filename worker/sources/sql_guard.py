"""What a catalogue query may do: one SELECT calling allow-listed functions, in a time limit.

PostgreSQL grants EXECUTE on most functions to every role, side effects included
(``pg_terminate_backend`` on the role's own sessions, ``set_config``, ``pg_advisory_lock``,
``pg_sleep``), so a read-only role is not enough: the query's parse tree is checked too.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from worker.core.errors import SourceError


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Functions a catalogue query may call: text, dates, numbers, aggregates, windows, arrays, JSON.
# Each reads its arguments and nothing else; anything else is refused, whatever it does.
FUNCTIONS = _words("""
    lower upper initcap concat concat_ws format replace translate regexp_replace substr
    substring btrim ltrim rtrim left right length char_length character_length octet_length
    split_part position strpos lpad rpad reverse starts_with md5 overlay normalize
    similar_to_escape similar_escape to_char to_number to_date to_timestamp date_trunc date_part
    extract timezone now abs round trunc floor ceil ceiling mod count min max sum avg
    string_agg array_agg row_number rank dense_rank lag lead first_value last_value
    generate_series unnest array_to_string string_to_array array_length cardinality
    json_extract_path_text jsonb_extract_path_text
""")
# Built-in operators by name (PostgreSQL's grammar writes LIKE as ~~, BETWEEN by name).
OPERATORS = _words("""
    = <> != < > <= >= + - * / % ^ || ~~ !~~ ~~* !~~* ~ ~* !~ !~* -> ->> #> #>> @> <@ ? ?| ?&
    && @@ & | # << >>
""") | {"BETWEEN", "NOT BETWEEN", "BETWEEN SYMMETRIC", "NOT BETWEEN SYMMETRIC"}
# Types a value may be cast to without a schema (pg_catalog.<type> is always built in).
TYPES = _words("""
    text varchar bpchar char name int2 int4 int8 smallint integer int bigint numeric decimal
    float4 float8 real bool boolean date time timetz timestamp timestamptz interval uuid json
    jsonb bytea
""")
SAMPLES = frozenset({"bernoulli", "system"})
# SQLite: reading is all a catalogue query may do (no ATTACH, which VACUUM INTO also asks for).
SQLITE_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                  sqlite3.SQLITE_RECURSIVE}
SQLITE_REFUSED_FUNCTIONS = {"load_extension", "fts3_tokenizer"}
PROGRESS_EVERY = 1000  # SQLite virtual-machine steps between looks at the clock


def check_select(query: str) -> None:
    """One SELECT that only reads, by PostgreSQL's own parser; SourceError says what is refused.

    A second statement could COMMIT the read-only transaction and write in a new one; a
    function outside ``FUNCTIONS`` could do anything its role may.
    """
    import pglast

    try:
        statements = pglast.parse_sql(query)
    except pglast.parser.ParseError as exc:
        raise SourceError(f"the catalogue query does not parse: {exc}") from exc
    if len(statements) != 1 or type(statements[0].stmt).__name__ != "SelectStmt":
        raise SourceError("the catalogue query must be a single SELECT statement "
                          f"(got {len(statements)} statements)")
    for node in _nodes(statements[0].stmt):
        problem = _problem(node)
        if problem:
            raise SourceError(f"the catalogue query may only read: {problem}")


def _nodes(root: Any) -> Iterator[Any]:
    from pglast import visitors

    found: list[Any] = []

    class Collect(visitors.Visitor):  # type: ignore[misc]
        def visit(self, ancestors: Any, node: Any) -> None:
            found.append(node)

    Collect()(root)
    return iter(found)


def _problem(node: Any) -> str | None:
    """Why this parse-tree node may not be in a catalogue query, or None."""
    kind = type(node).__name__
    if kind.endswith("Stmt") and kind != "SelectStmt":
        return f"a {kind.removesuffix('Stmt').upper()} inside it is refused"
    if kind in {"IntoClause", "LockingClause"}:
        return "SELECT INTO and FOR UPDATE/SHARE are refused"
    if kind in {"XmlExpr", "XmlSerialize", "RangeTableFunc"}:
        return "XML functions are refused"
    if kind == "FuncCall":
        return _refused_name("function", _names(node.funcname), FUNCTIONS)
    operator = {"A_Expr": "name", "SubLink": "operName", "SortBy": "useOp"}.get(kind)
    if operator and getattr(node, operator):  # a = b, a = ANY (SELECT ...), ORDER BY a USING <
        return _refused_name("operator", _names(getattr(node, operator)), OPERATORS)
    if kind == "TypeName":
        return _refused_name("type", _names(node.names), TYPES, any_builtin=True)
    if kind == "RangeTableSample":
        return _refused_name("TABLESAMPLE method", _names(node.method), SAMPLES)
    return None


def _names(parts: Any) -> list[str]:
    return [getattr(part, "sval", str(part)) for part in parts or ()]


def _refused_name(what: str, names: list[str], allowed: frozenset[str], *,
                  any_builtin: bool = False) -> str | None:
    schema, name = (names[0] if len(names) > 1 else None), names[-1]
    if schema == "pg_catalog" and (any_builtin or name in allowed):
        return None
    if schema is None and name in allowed:
        return None
    return f"{what} {'.'.join(names)} is not allowed (docs/nightly.md lists those that are)"


def postgresql_limits(conn: sa.Connection, seconds: int) -> None:
    """Server-side limits for this transaction: they hold even if the producer dies mid-query.

    ``statement_timeout`` bounds each fetch, ``idle_in_transaction_session_timeout`` a session
    left open between fetches, and (PostgreSQL 14+) ``client_connection_check_interval`` ends
    a query whose client is gone within seconds. Built-in functions resolve before any other.
    """
    limits = {"statement_timeout": f"{seconds}s",
              "idle_in_transaction_session_timeout": f"{seconds}s"}
    if (conn.dialect.server_version_info or (0,)) >= (14,):
        limits["client_connection_check_interval"] = "5s"
    for name, value in limits.items():
        conn.execute(sa.text("SELECT set_config(:name, :value, true)"),
                     {"name": name, "value": value})
    conn.execute(sa.text("SELECT set_config('search_path', 'pg_catalog, ' || "
                         "current_setting('search_path'), true)"))


@contextlib.contextmanager
def sqlite_limits(conn: sa.Connection, seconds: int) -> Iterator[Callable[[], None]]:
    """Read-only, reading only, and each step of the query bounded in time.

    Yields ``restart``: call it before each row is asked for, so that the limit bounds the
    query's own work, not the caller's between rows. All of it is put back afterwards.
    """
    raw = conn.connection.dbapi_connection
    deadline = math.inf

    def restart() -> None:
        nonlocal deadline
        deadline = time.monotonic() + seconds

    conn.exec_driver_sql("PRAGMA query_only = ON")
    raw.set_authorizer(_sqlite_authorizer)
    raw.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_EVERY)
    try:
        yield restart
    finally:
        raw.set_progress_handler(None, 0)
        raw.set_authorizer(None)
        conn.exec_driver_sql("PRAGMA query_only = OFF")


def _sqlite_authorizer(action: int, first: str | None, second: str | None, *_: Any) -> int:
    if action == sqlite3.SQLITE_FUNCTION and (second or "").lower() in SQLITE_REFUSED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in SQLITE_ALLOWED else sqlite3.SQLITE_DENY


def limit_problem(exc: BaseException, seconds: int) -> str | None:
    """One line for a catalogue query these limits stopped, or None."""
    if isinstance(exc, sqlite3.DatabaseError) and str(exc).startswith(
            ("not authorized", "authorization denied")):
        return ("the catalogue query may only read: SQLite refused it (ATTACH, VACUUM, "
                "PRAGMA, writes and load_extension are not allowed)")
    code = getattr(exc, "pgcode", None)
    if code == "57014" or (isinstance(exc, sqlite3.OperationalError)
                           and str(exc) == "interrupted"):
        return (f"the catalogue query ran over TAGGER_CATALOGUE_TIMEOUT={seconds}s: make it "
                "cheaper (an index on the columns it filters and orders by) or set "
                "TAGGER_CATALOGUE_TIMEOUT higher")
    if code == "25P03":
        return (f"the catalogue session sat idle over TAGGER_CATALOGUE_TIMEOUT={seconds}s "
                "between fetches (the producer was stalled): run it again, or set "
                "TAGGER_CATALOGUE_TIMEOUT higher")
    return None
