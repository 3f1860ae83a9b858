"""A chunk's writes on PostgreSQL in one round trip: COPY into a session table, then one merge.

SQLAlchemy's executemany sends an upsert of 64 rows as 64 INSERTs (plus a pre-ping per
checkout); COPY into a temporary table and one ``INSERT ... SELECT ... ON CONFLICT`` with the
pending and delivery updates in the same statement batch costs a few round trips per chunk.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from worker.db.tables import results

INCOMING = "incoming_results"
# (column, type in the session table): the results columns a worker writes, as the table has them.
COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (column.name, column.type.compile(dialect=postgresql.dialect()))
    for column in results.columns if column.name not in {"id", "created_at", "updated_at"})
NAMES = ", ".join(name for name, _ in COLUMNS)
CREATE_INCOMING = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {INCOMING} "
                   f"({', '.join(f'{n} {t}' for n, t in COLUMNS)}) ON COMMIT DELETE ROWS")
_UPDATED = ", ".join(f"{name} = EXCLUDED.{name}" for name, _ in COLUMNS
                     if name not in {"uri_hash", "model_id", "labelset_id"})
# A done result replaces anything; a failure never replaces a done result.
MERGE = f"""INSERT INTO results ({NAMES}) SELECT {NAMES} FROM {INCOMING}
ON CONFLICT (uri_hash, model_id, labelset_id) DO UPDATE SET {_UPDATED}, updated_at = now()
WHERE results.status <> 'done' OR EXCLUDED.status = 'done';
DELETE FROM pending p USING {INCOMING} i
WHERE p.uri_hash = i.uri_hash AND p.model = i.model AND p.labelset_id = i.labelset_id;
UPDATE deliveries SET finished_at = now() WHERE task_id = %(task_id)s;
"""
KEPT = "incoming_embeddings"
CREATE_KEPT = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {KEPT} (key int8, model_id int2, "
               "sha256 bytea, vector bytea) ON COMMIT DELETE ROWS")
_KEPT_NAMES = "key, model_id, sha256, vector"
KEEP = (f"INSERT INTO embeddings ({_KEPT_NAMES}) SELECT {_KEPT_NAMES} FROM {KEPT} "
        "ON CONFLICT (model_id, key) DO NOTHING")
IMAGES_IN = "incoming_images"
_IMAGE_NAMES = "uri_hash, uri, signed, item_key, source_version, content_key, content"
CREATE_IMAGES_IN = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {IMAGES_IN} (uri_hash varchar(64), "
                    "uri text, signed boolean, item_key text, source_version text, "
                    "content_key int8, content bytea) ON COMMIT DELETE ROWS")
NOTE_IMAGES = (f"INSERT INTO images ({_IMAGE_NAMES}) SELECT {_IMAGE_NAMES} FROM {IMAGES_IN} "
               "ON CONFLICT (uri_hash) DO UPDATE SET "
               + ", ".join(f"{name} = EXCLUDED.{name}" for name in _IMAGE_NAMES.split(", ")[1:])
               + ", updated_at = now()")
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def create_session_tables(dbapi_connection: Any, _record: Any) -> None:
    """On each new PostgreSQL connection: the session table chunks are copied into."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute(CREATE_INCOMING)
        cursor.execute(CREATE_KEPT)
        cursor.execute(CREATE_IMAGES_IN)
    dbapi_connection.commit()


_SPECIAL = re.compile(r"[\\\t\n\r]")


def _field(value: Any) -> str:
    if value is None:
        return "\\N"
    text = value if isinstance(value, str) else (
        json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else str(value))
    return text.translate(_ESCAPES) if _SPECIAL.search(text) else text


def copy_text(rows: Iterable[Mapping[str, Any]], names: Sequence[str] = NAMES.split(", ")
              ) -> str:
    """Rows in COPY's text format (tab-separated, backslash escapes, \\N for null)."""
    return "".join("\t".join([_field(row[name]) for name in names]) + "\n" for row in rows)


class Lines:
    """Result rows in COPY's text format whose columns but ``varying`` are the same for every
    row: those are rendered once, the others escaped as they come (a relabel writes 20,000
    rows a second: building a dict per row and escaping every column was a fifth of its CPU)."""

    def __init__(self, shared: Mapping[str, Any], varying: Sequence[str]) -> None:
        fields = [f"{{{varying.index(name)}}}" if name in varying
                  else _field(shared[name]).replace("{", "{{").replace("}", "}}")
                  for name, _ in COLUMNS]
        self.format = ("\t".join(fields) + "\n").format

    def text(self, rows: Iterable[Sequence[Any]]) -> str:
        return "".join([self.format(*map(_field, row)) for row in rows])


def write_lines(conn: Connection, text: str) -> None:
    """Upsert result rows given as COPY text (``Lines``), in the caller's transaction."""
    _copy(conn, f"COPY {INCOMING} ({NAMES}) FROM STDIN", text)
    conn.exec_driver_sql(MERGE, {"task_id": ""})


def write_chunk(conn: Connection, rows: Sequence[Mapping[str, Any]], task_id: str | None
                ) -> None:
    """Upsert ``rows``, clear their pending marks and close the delivery (caller's transaction)."""
    if rows:
        _copy(conn, f"COPY {INCOMING} ({NAMES}) FROM STDIN", copy_text(rows))
    conn.exec_driver_sql(MERGE, {"task_id": task_id or ""})


def keep_embeddings(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add kept embeddings (key, model_id, sha256, vector) that are not there yet."""
    text = "".join(f"{row['key']}\t{row['model_id']}\t\\\\x{row['sha256'].hex()}\t"
                   f"\\\\x{row['vector'].hex()}\n" for row in rows)
    _copy(conn, f"COPY {KEPT} ({_KEPT_NAMES}) FROM STDIN", text)
    conn.exec_driver_sql(KEEP)


def write_images(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert image rows (one per URI): what each image's latest fetch found."""
    text = copy_text(({**row, "content": f"\\x{row['content'].hex()}"} for row in rows),
                     _IMAGE_NAMES.split(", "))
    _copy(conn, f"COPY {IMAGES_IN} ({_IMAGE_NAMES}) FROM STDIN", text)
    conn.exec_driver_sql(NOTE_IMAGES)


def _copy(conn: Connection, statement: str, text: str) -> None:
    """COPY through the driver, its errors raised as SQLAlchemy's (``retried`` reads them)."""
    import psycopg2

    cursor = conn.connection.cursor()
    try:
        cursor.copy_expert(statement, io.StringIO(text))
    except psycopg2.Error as exc:
        lost = isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)
        if lost:
            conn.invalidate()  # a broken connection must not go back to the pool
        raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg2.Error,
                                         connection_invalidated=lost) from exc
    finally:
        if not cursor.closed:
            cursor.close()


def uses_copy(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2"

