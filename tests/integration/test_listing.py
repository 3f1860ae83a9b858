"""Listings against real sources: a PostgreSQL catalogue table, moto's S3 server, a folder."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from testkit.images import image_bytes
from testkit.services import reset_s3_clients
from worker.core.contract import Item
from worker.core.errors import ItemError, Skip, SourceError
from worker.core.settings import load_settings
from worker.db.schema import engine_for
from worker.sources import Budget, Listed, Skipped, source_for
from worker.sources.sql import describe, table_query


def listing(location: str, **options: Any) -> Iterator[Listed]:
    return source_for(location, load_settings({})).listing(location, **options)


def make_catalogue(url: str, table: str = "public.products") -> None:
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS shop"))
        conn.execute(sa.text(f"CREATE TABLE {table} (id bigint PRIMARY KEY, "
                             "image_url text, updated_at timestamptz)"))
        conn.execute(sa.text(
            f"INSERT INTO {table} VALUES (3, 's3://b/3.jpg', '2026-11-01 00:00+00'), "
            "(1, 'https://img.example.com/1.jpg', '2026-11-02 00:00+00'), (2, NULL, NULL)"))


def product_count(url: str) -> int:
    with engine_for(url).connect() as conn:
        return int(conn.scalar(sa.text("SELECT count(*) FROM products")))


@pytest.mark.parametrize("table", ["products", "public.products", "shop.products"])
def test_table_listing_with_schema_names(empty_pg_url: str, table: str):
    make_catalogue(empty_pg_url, "shop.products" if table.startswith("shop") else "products")
    query = table_query(table, "id", "image_url", "updated_at")
    items = list(listing(empty_pg_url, query=query))
    # Ordered by key; a row without a URL is skipped with its reason (counted on the run).
    assert items[0] == Item(uri="https://img.example.com/1.jpg", key="1",
                            version="2026-11-02 00:00:00+00:00")
    assert items[1] == Skipped(Skip.NO_URL, "key 2")
    assert items[2].key == "3" and items[2].uri == "s3://b/3.jpg"
    assert [i.version for i in listing(empty_pg_url, query=table_query(table, "id", "image_url"))
            if isinstance(i, Item)] == [None, None]
    assert describe(query).startswith("SELECT")


@pytest.mark.parametrize("names", [
    ("products; DROP TABLE products; --", "id", "image_url"),
    ("products", "id FROM products; DROP TABLE products; --", "image_url"),
    ("products", "id", "image_url, (SELECT 1) AS x"),
])
def test_table_and_column_names_are_identifiers_not_sql(empty_pg_url: str, names):
    make_catalogue(empty_pg_url, "products")
    with pytest.raises(SourceError, match="does not exist"):
        list(listing(empty_pg_url, query=table_query(*names)))
    assert product_count(empty_pg_url) == 3


@pytest.mark.parametrize(("query", "message"), [
    # A COMMIT would end the read-only transaction: refused by the parser, before running.
    ("SELECT id, image_url FROM products; COMMIT; DROP TABLE products", "single SELECT"),
    ("SELECT id, image_url FROM products; DROP TABLE products", "single SELECT"),
    ("DELETE FROM products RETURNING id, image_url", "single SELECT"),
])
def test_a_second_statement_or_a_write_is_refused(empty_pg_url: str, query: str, message: str):
    make_catalogue(empty_pg_url, "products")
    with pytest.raises(SourceError, match=message):
        list(listing(empty_pg_url, query=query))
    assert product_count(empty_pg_url) == 3


def test_a_query_that_does_not_parse_is_refused(empty_pg_url: str):
    with pytest.raises(SourceError, match="does not parse"):
        list(listing(empty_pg_url, query="SELEKT id FROM products"))


def test_empty_names_are_refused():
    with pytest.raises(SourceError):
        table_query("public.", "id", "image_url")
    with pytest.raises(SourceError):
        table_query("products", "", "image_url")


def test_query_streams_through_a_server_side_cursor(empty_pg_url: str):
    query = "SELECT g, 's3://b/' || g || '.jpg' FROM generate_series(1, 100000) AS g"
    items = listing(empty_pg_url, query=query, batch=500)
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
        list(listing(empty_pg_url, query="SELECT id, url FROM missing_table"))
    with pytest.raises(SourceError, match="key, image_url"):
        list(listing(empty_pg_url, query="SELECT 1"))
    with pytest.raises(SourceError, match="needs --query or --table"):
        list(listing(empty_pg_url))
    with pytest.raises(SourceError, match="not supported"):
        list(source_for("sqlite:///x", load_settings({})).listing("mysql://db/x", query="x"))


def test_a_sqlite_catalogue_is_read_only_while_listed(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE products (id integer, image_url text)"))
        conn.execute(sa.text("INSERT INTO products VALUES (1, '/a.jpg'), (2, '')"))
    assert list(listing(url, query="SELECT id, image_url FROM products ORDER BY id")) == [
        Item("/a.jpg", key="1"), Skipped(Skip.NO_URL, "key 2")]
    with pytest.raises(SourceError, match="may only read"):
        list(listing(url, query="DELETE FROM products RETURNING id, image_url"))
    with engine_for(url).begin() as conn:  # nothing else is read-only
        conn.execute(sa.text("INSERT INTO products VALUES (3, '/c.jpg')"))
        assert conn.scalar(sa.text("SELECT count(*) FROM products")) == 3


def test_folder_version_is_mtime_and_size(tmp_path: Path):
    (tmp_path / "a").mkdir()
    image = tmp_path / "a" / "x.jpg"
    image.write_bytes(b"one")
    (tmp_path / "notes.txt").write_text("not an image")
    first = list(listing(str(tmp_path)))
    assert Skipped(Skip.NOT_IMAGE, str(tmp_path / "notes.txt")) in first
    before = next(i for i in first if isinstance(i, Item))
    assert before.uri == image.as_uri()
    image.write_bytes(b"three")
    os.utime(image, ns=(1, 1))
    after = next(i for i in listing(str(tmp_path)) if isinstance(i, Item))
    assert after.uri == before.uri and after.version != before.version
    with pytest.raises(SourceError, match="not a folder"):
        list(listing(str(tmp_path / "missing")))


@pytest.mark.timeout(30)
def test_folder_listing_skips_odd_entries_and_goes_on(tmp_path: Path):
    (tmp_path / "0-first.jpg").write_bytes(image_bytes(0))
    (tmp_path / "1-dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(tmp_path / "2-pipe.jpg")
    (tmp_path / "3-readme.md").write_text("text")
    (tmp_path / "4-folder.png").mkdir()
    (tmp_path / "4-folder.png" / "inner.png").write_bytes(image_bytes(1))
    (tmp_path / "5-link.png").symlink_to(tmp_path / "0-first.jpg")
    (tmp_path / "6-last.webp").write_bytes(image_bytes(2, fmt="WEBP"))
    entries = list(listing(f"file://{tmp_path}"))
    skipped = {Path(e.detail).name: e.reason for e in entries if isinstance(e, Skipped)}
    assert skipped == {"1-dangling.jpg": Skip.BROKEN_LINK, "2-pipe.jpg": Skip.NOT_A_FILE,
                       "3-readme.md": Skip.NOT_IMAGE}
    listed = [Path(e.uri).name for e in entries if isinstance(e, Item)]
    assert listed == ["0-first.jpg", "5-link.png", "6-last.webp", "inner.png"]


def test_links_out_of_the_folder_carry_their_target(tmp_path: Path):
    root, outside = tmp_path / "photos", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "real.png").write_bytes(image_bytes(3))
    os.mkfifo(outside / "pipe.jpg")
    (root / "inside.png").write_bytes(image_bytes(4))
    links = {"a-link.png": outside / "real.png", "b-chain.png": root / "a-link.png",
             "c-alias.png": root / "inside.png", "d-pipe.jpg": outside / "pipe.jpg",
             "e-device.jpg": Path("/dev/null"), "f-gone.jpg": outside / "none.jpg",
             "g-folder.jpg": outside, "h-folder": outside}
    for name, target in links.items():
        (root / name).symlink_to(target, target_is_directory=target.is_dir())
    entries = list(listing(str(root)))
    skipped = {Path(e.detail).name: e.reason for e in entries if isinstance(e, Skipped)}
    assert skipped == {"d-pipe.jpg": Skip.NOT_A_FILE, "e-device.jpg": Skip.NOT_A_FILE,
                       "f-gone.jpg": Skip.BROKEN_LINK, "g-folder.jpg": Skip.NOT_A_FILE,
                       "h-folder": Skip.NOT_IMAGE}
    items = {Path(e.uri).name: e for e in entries if isinstance(e, Item)}
    assert sorted(items) == ["a-link.png", "b-chain.png", "c-alias.png", "inside.png"]
    # Listed by their own name in the folder; a link out of it names the file it reads.
    assert items["a-link.png"].uri == (root / "a-link.png").as_uri()
    real = str((outside / "real.png").resolve())
    assert [getattr(items[n], "target", None) for n in sorted(items)] == [real, real, None, None]


def test_s3_version_is_the_etag(bucket: str):
    reset_s3_clients()
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="p/1.jpg", Body=b"one")
    s3.put_object(Bucket=bucket, Key="p/readme.md", Body=b"text")
    s3.put_object(Bucket=bucket, Key="q/2.jpg", Body=b"other prefix")
    items = list(listing(f"s3://{bucket}/p/"))
    assert items[1] == Skipped(Skip.NOT_IMAGE, "p/readme.md")
    assert items[0].uri == f"s3://{bucket}/p/1.jpg" and len(items) == 2
    s3.put_object(Bucket=bucket, Key="p/1.jpg", Body=b"changed bytes")
    assert next(iter(listing(f"s3://{bucket}/p/"))).version != items[0].version
    with pytest.raises(SourceError, match="NoSuchBucket"):
        list(listing(f"s3://{bucket}-missing/"))


def test_names_that_are_not_utf8_round_trip_through_their_uris(tmp_path: Path):
    """Listed as file:// URIs whose escapes are the name's bytes; fetched from those bytes."""
    folder = tmp_path / "photos"
    (folder / os.fsdecode(b"sub-\xe9t\xe9")).mkdir(parents=True)  # Latin-1, as on old disks
    names = {b"\xff\xfe.png": image_bytes(1), b"caf\xe9.png": image_bytes(2),
             b"sub-\xe9t\xe9/\xb7\xfe.png": image_bytes(3)}  # GBK bytes, read as UTF-8: invalid
    for name, data in names.items():
        (folder / os.fsdecode(name)).write_bytes(data)
    items = [e for e in listing(str(folder)) if isinstance(e, Item)]
    assert sorted(i.uri for i in items) == sorted(
        (folder / os.fsdecode(n)).as_uri() for n in names)
    assert all(i.uri.isascii() for i in items)  # stored and sent as they are
    source = source_for(items[0].uri, load_settings({}))
    budget = Budget(time.monotonic() + 30, (folder,))
    fetched = sorted(source.fetch(i.uri, budget) for i in items)
    assert fetched == sorted(names.values())
    missing = (folder / os.fsdecode(b"gone-\xff.png")).as_uri()
    with pytest.raises(ItemError, match=r"no such file: .*gone-\\xff\.png") as gone:
        source.fetch(missing, budget)
    assert gone.value.reason == "not-found"


def test_a_folder_whose_own_path_is_not_utf8_is_one_line(tmp_path: Path):
    folder = tmp_path / os.fsdecode(b"fotos-\xe9")
    folder.mkdir()
    with pytest.raises(SourceError, match=r"not UTF-8 \(.*fotos-\\xe9\)"):
        source_for(str(folder), load_settings({})).locate(str(folder))
