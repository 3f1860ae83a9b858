"""The catalogue --query on real databases: reads only, allow-listed functions, bounded in time."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from testkit.commands import PRODUCER, user_env
from testkit.services import REDIS_URL, admin_engine_for, wait_until
from worker.core.contract import Item
from worker.core.errors import SourceError
from worker.core.settings import load_settings
from worker.db.schema import engine_for
from worker.sources import source_for

SLOW = "SELECT count(*), 's3://b/x.jpg' FROM generate_series(1, 10000000000)"  # minutes


def listing(location: str, timeout: int = 600, **options: Any) -> list[Any]:
    settings = load_settings({"TAGGER_CATALOGUE_TIMEOUT": str(timeout)})
    return list(source_for(location, settings).listing(location, **options))


@pytest.fixture
def catalogue(empty_pg_url: str) -> str:
    with engine_for(empty_pg_url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE products (id bigint PRIMARY KEY, image_url text, "
                             "updated_at timestamptz)"))
        conn.execute(sa.text("INSERT INTO products VALUES (1, 's3://b/1.jpg', now()), "
                             "(2, 'S3://b/2.jpg', NULL)"))
    return empty_pg_url


@pytest.mark.parametrize("query", [
    "SELECT pg_terminate_backend(pid), 'x' FROM pg_stat_activity",
    "SELECT 1, pg_read_file('/etc/passwd')",
    "SELECT 1, x FROM lo_import('/etc/passwd') AS x",
    "SELECT set_config('statement_timeout', '0', false), 'x'",
    "SELECT pg_advisory_lock(1), 'x'",
    "SELECT pg_sleep(3600), 'x'",
    "SELECT 1, query_to_xml('SELECT pg_sleep(3600)', true, true, '')",
    # hidden in a subquery, a CTE, a cast, a FROM, a filter, an ORDER BY, a VALUES list
    "SELECT id, image_url FROM products WHERE id IN (SELECT pg_advisory_lock(2)::int)",
    "WITH f AS (SELECT pg_read_file('/etc/passwd') AS t) SELECT 1, t FROM f",
    "SELECT 1, CAST(pg_read_file('/etc/passwd') AS text)",
    "SELECT 1, f FROM pg_ls_dir('/') AS f",
    "SELECT count(*) FILTER (WHERE pg_sleep(1) IS NULL), 'x' FROM products",
    "SELECT id, image_url FROM products ORDER BY pg_sleep(1)",
    "VALUES (1, pg_read_file('/etc/passwd'))",
    "SELECT id, (SELECT pg_catalog.pg_sleep(1))::text FROM products",
    # a look-alike in another schema, an operator or type of another schema
    "SELECT id, public.lower(image_url) FROM products",
    "SELECT id, image_url OPERATOR(public.||) 'x' FROM products",
    "SELECT id, image_url::public.evil FROM products",
    "SELECT id, image_url FROM products ORDER BY id USING OPERATOR(public.<)",
    "SELECT id, image_url FROM products WHERE id OPERATOR(public.=) ANY (SELECT 1)",
    "SELECT 1, x FROM XMLTABLE('/a' PASSING '<a/>' COLUMNS x text)",
    # writes the read-only transaction would stop too
    "SELECT id, image_url INTO stolen FROM products",
    "SELECT id, image_url FROM products FOR UPDATE",
    "WITH gone AS (DELETE FROM products RETURNING id, image_url) SELECT * FROM gone",
])
def test_queries_that_do_more_than_read_are_refused_before_running(catalogue: str, query: str):
    admin = admin_engine_for(catalogue)
    with admin.connect() as other:  # a session pg_terminate_backend would have killed
        with pytest.raises(SourceError, match=r"may only read|single SELECT") as refused:
            listing(catalogue, query=query)
        assert "\n" not in str(refused.value)
        assert other.scalar(sa.text("SELECT 1")) == 1
    with admin.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM products")) == 2
        assert not conn.scalar(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = "
                                       "'advisory'"))


def test_ordinary_queries_still_run(catalogue: str):
    query = ("SELECT id, lower(image_url), to_char(updated_at, 'YYYY-MM-DD') FROM products "
             "WHERE image_url ILIKE 's3://%' AND id BETWEEN 1 AND 10 AND id = ANY(ARRAY[1, 2]) "
             "AND id IN (SELECT id FROM products WHERE id < 5) "
             "ORDER BY coalesce(updated_at, now()), pg_catalog.length(image_url)")
    rows = listing(catalogue, query=query)
    assert [(r.key, r.uri) for r in rows] == [("1", "s3://b/1.jpg"), ("2", "s3://b/2.jpg")]
    assert rows[0].version and rows[1].version is None


def test_functions_in_a_view_meet_the_read_only_transaction(catalogue: str):
    # A view is the database owner's; its writes still meet the read-only transaction.
    with engine_for(catalogue).begin() as conn:
        conn.execute(sa.text("CREATE SEQUENCE ids"))
        conn.execute(sa.text("CREATE VIEW numbered AS SELECT nextval('ids') AS id, 'x' AS u"))
    with pytest.raises(SourceError, match="read-only transaction"):
        listing(catalogue, query="SELECT id, u FROM numbered")
    with engine_for(catalogue).begin() as conn:  # nothing else is read-only
        assert conn.scalar(sa.text("SELECT nextval('ids')")) == 1


@pytest.mark.timeout(60)
def test_a_slow_query_is_a_one_line_error_naming_the_setting(catalogue: str):
    with pytest.raises(SourceError, match="ran over TAGGER_CATALOGUE_TIMEOUT=1s") as over:
        listing(catalogue, timeout=1, query=SLOW)
    assert "\n" not in str(over.value)


@pytest.mark.timeout(120)
def test_a_killed_producer_leaves_no_query_running(catalogue: str, pg_url: str,
                                                    tmp_path: Path):
    """The limits are the server's: they end the query when the producer is SIGKILLed."""
    env = user_env(DATABASE_URL=pg_url, CELERY_BROKER_URL=REDIS_URL,
                   TAGGER_QUEUE=f"guard-{uuid.uuid4().hex[:8]}", TAGGER_CATALOGUE_TIMEOUT="5",
                   TAGGER_HOME=str(tmp_path / "home"))
    admin = admin_engine_for(catalogue)

    def running() -> int:  # the cursor's FETCH, in the catalogue database
        with admin.connect() as conn:
            return int(conn.scalar(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND datname = "
                "current_database() AND pid <> pg_backend_pid()")))

    producer = subprocess.Popen([PRODUCER, "enqueue", "--database-url", catalogue, "--query",
                                 SLOW], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        wait_until(running, 60, message="the catalogue query never started")
        producer.send_signal(signal.SIGKILL)
        producer.wait(10)
        killed = time.monotonic()
        wait_until(lambda: not running(), 60, message="the query outlived its producer")
        assert time.monotonic() - killed < 60
    finally:
        producer.kill()


def test_a_select_only_role_on_a_database_without_temp_tables(catalogue: str):
    """The role docs/nightly.md recommends: it may read the catalogue and nothing else."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    admin = admin_engine_for(catalogue)
    database = sa.make_url(catalogue).database
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC'))
        conn.execute(sa.text(f"GRANT SELECT ON products TO {role}"))
    try:
        url = sa.make_url(catalogue).set(username=role).render_as_string(hide_password=False)
        rows = listing(url, query="SELECT id, image_url FROM products ORDER BY id")
        assert [r.uri for r in rows] == ["s3://b/1.jpg", "S3://b/2.jpg"]
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
                                 f"WHERE usename = '{role}'"))
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))


# --- SQLite catalogues ------------------------------------------------------------------------

@pytest.fixture
def sqlite_catalogue(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE products (id integer, image_url text)"))
        conn.execute(sa.text("INSERT INTO products VALUES (1, '/a.jpg'), (2, '/b.jpg')"))
    return url


@pytest.mark.parametrize("query", [
    "ATTACH DATABASE '{made}' AS x",
    "VACUUM INTO '{made}'",
    "SELECT id, load_extension('{made}') FROM products",
    "PRAGMA query_only = OFF",
])
def test_sqlite_queries_that_make_files_are_refused(sqlite_catalogue: str, tmp_path: Path,
                                                    query: str):
    made = tmp_path / "made.db"
    with pytest.raises(SourceError, match="may only read"):
        listing(sqlite_catalogue, query=query.format(made=made))
    assert not made.exists()
    # Nothing else is read-only or refused.
    with engine_for(sqlite_catalogue).begin() as conn:
        conn.execute(sa.text("INSERT INTO products VALUES (3, '/c.jpg')"))
        conn.execute(sa.text(f"ATTACH DATABASE '{tmp_path / 'ok.db'}' AS ok"))


def test_a_sqlite_catalogue_keeps_its_journal_mode(tmp_path: Path):
    path = tmp_path / "theirs.db"
    with contextlib.closing(sqlite3.connect(path)) as theirs, theirs:
        theirs.execute("CREATE TABLE products (id integer, image_url text)")
        theirs.execute("INSERT INTO products VALUES (1, '/a.jpg')")
    assert listing(f"sqlite:///{path}", query="SELECT id, image_url FROM products")
    with contextlib.closing(sqlite3.connect(path)) as theirs:
        assert theirs.execute("PRAGMA journal_mode").fetchone() == ("delete",)


@pytest.mark.timeout(60)
def test_a_slow_sqlite_query_is_stopped(sqlite_catalogue: str):
    endless = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
               "SELECT count(*), 'x' FROM n")
    with pytest.raises(SourceError, match="ran over TAGGER_CATALOGUE_TIMEOUT=1s"):
        listing(sqlite_catalogue, timeout=1, query=endless)


def test_the_sqlite_limit_bounds_the_query_not_the_reader(sqlite_catalogue: str):
    settings = load_settings({"TAGGER_CATALOGUE_TIMEOUT": "1"})
    rows = source_for(sqlite_catalogue, settings).listing(
        sqlite_catalogue, query="SELECT id, image_url FROM products ORDER BY id", batch=1)
    read = []
    for row in rows:  # a reader slower than the limit between rows is not the query's fault
        read.append(row)
        time.sleep(1.2)
    assert read == [Item("/a.jpg", key="1"), Item("/b.jpg", key="2")]
