"""Iterate the images of a source (S3 bucket, local folder, SQL query) as Items, streaming."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.exceptions
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from worker.store import Item, engine_for

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class SourceError(Exception):
    """The source cannot be listed (missing bucket, bad credentials, bad query)."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def list_s3(bucket: str, prefix: str = "") -> Iterator[Item | None]:
    """Every object under the prefix, page by page; None for each non-image key (skipped)."""
    client = boto3.session.Session().client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    try:
        for page in pages:
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if is_image_name(key):
                    yield Item(uri=f"s3://{bucket}/{key}", version=obj.get("ETag", "").strip('"'))
                else:
                    yield None
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise SourceError(f"cannot list s3://{bucket}/{prefix}: "
                          f"{error.get('Code', 'error')}: {error.get('Message', exc)}") from exc
    except (botocore.exceptions.NoCredentialsError,
            botocore.exceptions.EndpointConnectionError) as exc:
        raise SourceError(f"cannot list s3://{bucket}/{prefix}: {exc}") from exc


def list_dir(root: Path) -> Iterator[Item | None]:
    """Every file below ``root`` in a stable order; None for each non-image file (skipped)."""
    if not root.is_dir():
        raise SourceError(f"not a directory: {root}")
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name).absolute()
            if not is_image_name(name):
                yield None
                continue
            stat = path.stat()
            yield Item(uri=path.as_uri(), version=f"{stat.st_mtime_ns:x}-{stat.st_size:x}")


def list_query(database_url: str, query: str | sa.Select, *, batch: int = 5000
               ) -> Iterator[Item | None]:
    """Rows of (key, url[, version]) from a SQL query, through a server-side cursor.

    Only ``batch`` rows are held at a time, so a catalogue of millions lists in constant memory;
    a row without a URL is None (counted as skipped).
    """
    statement = sa.text(query) if isinstance(query, str) else query
    engine = engine_for(database_url)
    # A read-only transaction: a --query that would write to the catalogue fails instead.
    readonly = {"postgresql_readonly": True} if engine.dialect.name == "postgresql" else {}
    try:
        with engine.connect().execution_options(**readonly) as conn:
            rows = conn.execution_options(stream_results=True, yield_per=batch).execute(statement)
            for row in rows:
                if len(row) < 2:
                    raise SourceError("the query must return (key, image_url[, version]) columns")
                key, url = row[0], row[1]
                version = str(row[2]) if len(row) > 2 and row[2] is not None else None
                yield Item(uri=str(url), key=str(key), version=version) if url else None
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(f"catalogue query failed: {exc.__class__.__name__}: "
                          f"{getattr(exc, 'orig', None) or exc}") from exc


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
