"""Listings against real sources: a PostgreSQL catalogue table, moto's S3 server, a folder."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa

from producer.listing import SourceError, describe, list_dir, list_query, list_s3, table_query
from worker.store import Item, engine_for


def make_catalogue(url: str, table: str = "public.products") -> None:
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS shop"))
        conn.execute(sa.text(f"CREATE TABLE {table} (id bigint PRIMARY KEY, "
                             "image_url text, updated_at timestamptz)"))
        conn.execute(sa.text(
            f"INSERT INTO {table} VALUES (3, 's3://b/3.jpg', '2026-11-01 00:00+00'), "
            "(1, 'https://img.example.com/1.jpg', '2026-11-02 00:00+00'), (2, NULL, NULL)"))


@pytest.mark.parametrize("table", ["products", "public.products", "shop.products"])
def test_table_listing_with_schema_names(empty_pg_url: str, table: str):
    make_catalogue(empty_pg_url, "shop.products" if table.startswith("shop") else "products")
    query = table_query(table, "id", "image_url", "updated_at")
    items = list(list_query(empty_pg_url, query))
    # Ordered by key; a row without a URL is listed as None (counted as skipped).
    assert items[0] == Item(uri="https://img.example.com/1.jpg", key="1",
                            version="2026-11-02 00:00:00+00:00")
    assert items[1] is None
    assert items[2].key == "3" and items[2].uri == "s3://b/3.jpg"
    assert [i.version for i in list_query(empty_pg_url, table_query(table, "id", "image_url"))
            if i] == [None, None]
    assert describe(query).startswith("SELECT")


@pytest.mark.parametrize("names", [
    ("products; DROP TABLE products; --", "id", "image_url"),
    ("products", "id FROM products; DROP TABLE products; --", "image_url"),
    ("products", "id", "image_url, (SELECT 1) AS x"),
])
def test_table_and_column_names_are_identifiers_not_sql(empty_pg_url: str, names):
    make_catalogue(empty_pg_url, "products")
    with pytest.raises(SourceError, match="does not exist"):
        list(list_query(empty_pg_url, table_query(*names)))
    with engine_for(empty_pg_url).connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM products")) == 3


def test_the_catalogue_is_read_in_a_read_only_transaction(empty_pg_url: str):
    engine = engine_for(empty_pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SEQUENCE product_ids"))
    # The cursor refuses INSERT/DELETE by itself; functions that write need the read-only mode.
    with pytest.raises(SourceError, match="read-only transaction"):
        list(list_query(empty_pg_url, "SELECT nextval('product_ids'), 'https://x.example/1.jpg'"))
    with engine.begin() as conn:  # the pooled connection is writable again
        assert conn.scalar(sa.text("SELECT nextval('product_ids')")) == 1


def test_empty_names_are_refused():
    with pytest.raises(SourceError):
        table_query("public.", "id", "image_url")


def test_query_streams_through_a_server_side_cursor(empty_pg_url: str):
    query = "SELECT g, 's3://b/' || g || '.jpg' FROM generate_series(1, 100000) AS g"
    items = list_query(empty_pg_url, query, batch=500)
    first = [next(items) for _ in range(1000)]
    assert first[-1].key == "1000"
    # The rest of the 100,000 rows are still on the server, behind a named cursor.
    database = sa.make_url(empty_pg_url).database
    with sa.create_engine(sa.make_url(empty_pg_url).set(drivername="postgresql+psycopg2"),
                          poolclass=sa.pool.NullPool).connect() as other:
        queries = other.scalars(sa.text(
            "SELECT query FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"),
            {"db": database}).all()
    assert any(q.startswith("FETCH FORWARD") for q in queries), queries
    assert sum(1 for _ in items) == 99000


def test_bad_queries_are_source_errors(empty_pg_url: str):
    with pytest.raises(SourceError, match="catalogue query failed"):
        list(list_query(empty_pg_url, "SELECT id, url FROM missing_table"))
    with pytest.raises(SourceError, match="key, image_url"):
        list(list_query(empty_pg_url, "SELECT 1"))


def test_folder_version_is_mtime_and_size(tmp_path: Path):
    (tmp_path / "a").mkdir()
    image = tmp_path / "a" / "x.jpg"
    image.write_bytes(b"one")
    (tmp_path / "notes.txt").write_text("not an image")
    first = list(list_dir(tmp_path))
    assert None in first
    before = next(i for i in first if i)
    assert before.uri == image.as_uri()
    image.write_bytes(b"three")
    os.utime(image, ns=(1, 1))
    after = next(i for i in list_dir(tmp_path) if i)
    assert after.uri == before.uri and after.version != before.version
    with pytest.raises(SourceError):
        list(list_dir(tmp_path / "missing"))


def test_s3_version_is_the_etag(bucket: str):
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="p/1.jpg", Body=b"one")
    s3.put_object(Bucket=bucket, Key="p/readme.md", Body=b"text")
    s3.put_object(Bucket=bucket, Key="q/2.jpg", Body=b"other prefix")
    items = list(list_s3(bucket, "p/"))
    assert items[1] is None and items[0].uri == f"s3://{bucket}/p/1.jpg"
    s3.put_object(Bucket=bucket, Key="p/1.jpg", Body=b"changed bytes")
    assert next(iter(list_s3(bucket, "p/"))).version != items[0].version
    with pytest.raises(SourceError, match="NoSuchBucket"):
        list(list_s3(bucket + "-missing"))
