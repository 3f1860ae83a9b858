"""The results database on PostgreSQL and SQLite: idempotent upserts, pending marks, migrations."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from testkit.models import stored_model
from worker.backends.weights import Weights
from worker.core.contract import KEPT_RUNTIME, Item, Result, uri_hash
from worker.core.embedding import key_of, pack
from worker.core.errors import Reason, TransientError
from worker.db import embeddings, labelsets, migrate, models
from worker.db import runs as producer_db
from worker.db import status as db_status
from worker.db import writes as worker_db
from worker.db.schema import engine_for, images, metadata, normalise_url, pending, results


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> sa.Engine:
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return engine_for(request.getfixturevalue(fixture))


def result(uri: str, status: str = "done", score: float = 0.9, **changes: Any) -> Result:
    done = status == "done"
    fields: dict[str, Any] = {
        "model": "m", "labelset_id": "ls", "run_id": "r1", "content_sha256": "ab" * 32,
        "labels": [{"label": "台灯", "score": score}] if done else [],
        "reason": None if done else Reason.UNDECODABLE, "error": None if done else "bad"}
    item = Item(uri, key=changes.pop("item_key", None), version=changes.pop("version", "v1"))
    return Result(item=item, **(fields | changes))


def all_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(results).order_by(results.c.uri)))


def pending_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(pending)) or 0)


def test_every_character_survives_the_write(engine):
    # PostgreSQL writes through COPY's text format: its escapes must round-trip exactly.
    odd = "tab\there, line\nbreak, cr\r, back\\slash \\N, 引号 \"'"
    labels = [{"label": "台\t灯\\", "score": 0.5, "parent": "家\n居"},
              {"label": "\\N", "score": 0.5}]
    worker_db.write_results(engine, [
        result(f"s3://b/{odd}.jpg", labels=labels, item_key=odd, content_sha256=None),
        result("s3://b/failed.jpg", status="failed", error=odd, run_id=None)])
    rows = {r.uri: r for r in all_rows(engine)}
    done, failed = rows[f"s3://b/{odd}.jpg"], rows["s3://b/failed.jpg"]
    assert (done.item_key, done.labels, done.top_label) == (odd, labels, "台\t灯\\")
    assert done.content_sha256 is None and done.error is None and done.reason is None
    assert (failed.error, failed.run_id, failed.labels) == (odd, None, [])


def test_upsert_is_idempotent(engine):
    chunk = [result("s3://b/1.jpg"), result("s3://b/2.jpg"), result("s3://b/1.jpg", score=0.8)]
    worker_db.write_results(engine, chunk)
    worker_db.write_results(engine, chunk)
    stored = all_rows(engine)
    assert [r.uri for r in stored] == ["s3://b/1.jpg", "s3://b/2.jpg"]
    assert stored[0].labels == [{"label": "台灯", "score": 0.8}]
    assert stored[0].uri_hash == uri_hash("s3://b/1.jpg") and stored[0].top_score == 0.8


def test_failure_never_replaces_done_but_success_replaces_failure(engine):
    worker_db.write_results(engine, [result("a"), result("b", status="failed")])
    worker_db.write_results(engine, [result("a", status="failed"), result("b", score=0.7)])
    stored = {r.uri: r for r in all_rows(engine)}
    assert stored["a"].status == "done" and stored["a"].labels[0]["score"] == 0.9
    assert stored["b"].status == "done" and stored["b"].error is None
    assert stored["b"].reason is None


def test_top_label_query_uses_an_index(pg_url):
    engine = engine_for(pg_url)
    worker_db.write_results(engine, [result(f"u{i}", score=i / 100) for i in range(100)])
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(conn.scalars(sa.text(
            "EXPLAIN SELECT uri FROM results WHERE top_label = '台灯' AND top_score > 0.5")))
        matches = conn.scalar(sa.text(
            "SELECT count(*) FROM results WHERE top_label = '台灯' AND top_score > 0.5"))
    assert "ix_results_top_label" in plan
    assert matches == 49


def test_long_and_chinese_uris_are_stored_and_upserted(engine):
    # A btree entry holds at most ~2.7 KB: URIs are indexed by their hash, never their text.
    long = "https://img.example.com/p/" + "長" * 3000 + "x" * (10_000 - 3026)
    chinese = "/数据/商品 图片/红色 鞋子 #1.jpg"
    assert len(long) == 10_000
    items = [Item(long, version="v1"), Item(chinese, version="v1")]
    with engine.begin() as conn:
        assert producer_db.claim_pending(conn, items, "m", "ls", "r1", ttl_seconds=60) == items
    worker_db.write_results(engine, [result(long, status="failed"), result(chinese)])
    worker_db.write_results(engine, [result(long, score=0.5), result(chinese, score=0.6)])
    stored = {r.uri: r for r in all_rows(engine)}
    assert set(stored) == {long, chinese}
    assert (stored[long].status, stored[long].top_score, stored[chinese].top_score) == (
        "done", 0.5, 0.6)
    assert pending_count(engine) == 0
    with engine.connect() as conn:
        assert producer_db.due_items(conn, items, stored_model(engine).id, "ls").items == []
    assert [r["uri"] for r in producer_db.iter_results(engine, uri_prefix="/数据/商品 ")] == [
        chinese]


def test_a_chunk_of_5000_results_writes_on_sqlite(sqlite_url):
    # SQLite allows a few thousand bound variables per statement; a chunk has many more.
    engine = engine_for(sqlite_url)
    items = [Item(f"s3://b/{i}.jpg", version="v1") for i in range(5000)]
    with engine.begin() as conn:
        assert len(producer_db.claim_pending(conn, items, "m", "ls", "r1", 60)) == 5000
    worker_db.write_results(engine, [result(i.uri, content_sha256=f"{n:064x}")
                                     for n, i in enumerate(items)], task_id="big")
    assert len(all_rows(engine)) == 5000 and pending_count(engine) == 0
    with engine.connect() as conn:
        assert producer_db.due_items(conn, items, stored_model(engine).id, "ls").items == []
    known = worker_db.done_by_content(engine, stored_model(engine).id, "ls",
                                      [f"{n:064x}" for n in range(5000)])
    assert len(known) == 5000
    with engine.begin() as conn:
        producer_db.claim_pending(conn, items, "m", "ls", "r2", 60)
    assert producer_db.release_pending(engine, "r2", items[:4000]) == 4000
    assert producer_db.release_pending(engine, "r2") == 1000


def test_pending_blocks_a_second_claim_until_written(engine):
    items = [Item("a", version="1"), Item("b", version="1")]
    with engine.begin() as conn:
        assert producer_db.claim_pending(conn, items, "m", "ls", "run1", ttl_seconds=60) == items
        assert producer_db.claim_pending(conn, items, "m", "ls", "run2", ttl_seconds=60) == []
    worker_db.write_results(engine, [result("a")])  # answering an image clears its mark
    with engine.begin() as conn:
        assert producer_db.claim_pending(conn, items, "m", "ls", "run3",
                                         ttl_seconds=60) == [items[0]]
        assert producer_db.claim_pending(conn, items, "m", "ls", "run4", ttl_seconds=60,
                                         force=True) == items
        # Forced or not, a run never claims one image twice.
        assert producer_db.claim_pending(conn, items, "m", "ls", "run4", ttl_seconds=60,
                                         force=True) == []


def test_stale_pending_marks_expire(engine):
    items = [Item("a")]
    with engine.begin() as conn:
        producer_db.claim_pending(conn, items, "m", "ls", "run1", ttl_seconds=60)
        assert producer_db.claim_pending(conn, items, "m", "ls", "run2", ttl_seconds=0) == items


def test_due_items_compare_versions(engine):
    worker_db.write_results(engine, [result("a"), result("b")])
    items = [Item("a", version="v1"), Item("b", version="v2"), Item("c", version="v1"),
             Item("a")]
    other = stored_model(engine, "other").id
    with engine.connect() as conn:
        due = producer_db.due_items(conn, items, stored_model(engine).id, "ls").items
        assert [i.uri for i in due] == ["b", "c"]
        assert [i.uri for i in producer_db.due_items(conn, items, other, "ls").items] == [
            "a", "b", "c", "a"]


def test_deliveries_are_counted_and_closed(engine):
    assert [worker_db.start_delivery(engine, "task-1", "r1", 2).starts
            for _ in range(3)] == [1, 2, 3]
    assert worker_db.start_delivery(engine, "task-2", "r1", 1).starts == 1
    with engine.begin() as conn:
        producer_db.claim_pending(conn, [Item("a"), Item("b"), Item("c")], "m", "ls", "r1", 60)
    assert db_status.result_counts(engine, "r1")["in_flight"] == 3
    worker_db.write_results(engine, [result("a"), result("b")], task_id="task-1")
    counts = db_status.result_counts(engine, "r1")
    assert (counts["done"], counts["pending"], counts["in_flight"]) == (2, 1, 1)
    assert worker_db.start_delivery(engine, "task-1", "r1", 2).starts == 4  # re-opened


def test_failed_images_are_not_taken_for_done(engine):
    worker_db.write_results(engine, [result("a"), result("b", status="failed")])
    items = [Item("a", version="v1"), Item("b", version="v1"), Item("c", version="v1")]
    with engine.connect() as conn:
        due = producer_db.due_items(conn, items, stored_model(engine).id, "ls")
        assert ([i.uri for i in due.items], due.failed_before) == (["c"], 1)
        again = producer_db.due_items(conn, items, stored_model(engine).id, "ls", retry_failed=True)
        assert ([i.uri for i in again.items], again.failed_before) == (["b", "c"], 0)


def test_retries_are_counted_by_the_workers_records(engine):
    # Granted even when the start was never recorded (the database was away then).
    assert [worker_db.grant_retry(engine, "t", limit=2) for _ in range(3)] == [1, 2, None]
    assert worker_db.grant_retry(engine, "u", limit=0) is None
    delivery = worker_db.start_delivery(engine, "t", "r1", 1)
    assert (delivery.starts, delivery.retries, delivery.deaths) == (2, 2, -1)


def test_a_cancelled_run_is_seen_by_its_deliveries(engine):
    producer_db.create_run(engine, "r1", "test", "m", "ls", ["/photos"])
    with engine.begin() as conn:
        producer_db.claim_pending(conn, [Item("a")], "m", "ls", "r1", 60)
    assert not worker_db.start_delivery(engine, "t1", "r1", 1).cancelled
    producer_db.add_file_roots(engine, "r1", ["/elsewhere/a.jpg", "/photos", "/elsewhere/a.jpg"])
    assert worker_db.run_file_roots(engine, "r1") == (["/photos", "/elsewhere/a.jpg"], False)
    producer_db.cancel_run(engine, "r1", "interrupted")
    assert worker_db.start_delivery(engine, "t2", "r1", 1).cancelled
    assert not worker_db.start_delivery(engine, "t3", None, 1).cancelled
    assert pending_count(engine) == 0
    (run,) = db_status.find_runs(engine, "r1")
    assert (run["state"], run["error"]) == ("stopped", "interrupted")


def test_text_embeddings_are_keyed_by_encoder(engine):
    assert labelsets.load_text_embeddings(engine, 1, "ls", "torch float32") is None
    labelsets.save_text_embeddings(engine, 1, "ls", "torch float32", 2, 3, b"\x00" * 24)
    labelsets.save_text_embeddings(engine, 1, "ls", "torch float32", 2, 3, b"\x01" * 24)
    assert labelsets.load_text_embeddings(engine, 1, "ls", "torch float32") == (
        2, 3, b"\x00" * 24)  # the first writer wins
    assert labelsets.load_text_embeddings(engine, 1, "ls", "onnx float32") is None
    labelsets.save_text_embeddings(engine, 1, "ls", "onnx float32", 2, 3, b"\x02" * 24)
    assert labelsets.load_text_embeddings(engine, 1, "ls", "onnx float32")[2] == b"\x02" * 24
    assert labelsets.load_text_embeddings(engine, 1, "ls", "torch float32")[2] == b"\x00" * 24


def test_unreachable_database_is_transient():
    engine = engine_for("postgresql://postgres:s3cret@127.0.0.1:1/none")
    with pytest.raises(TransientError, match="database unavailable") as info:
        worker_db.start_delivery(engine, "t", None, 1)
    assert "s3cret" not in str(info.value)


def test_a_mistake_in_sql_is_not_transient(empty_pg_url):
    # No tables: retrying cannot help, and the error must not be hidden as "unavailable".
    engine = engine_for(empty_pg_url)
    failed: list[str] = []  # each statement that reached the database and failed there

    def record(context: sa.engine.ExceptionContext) -> None:
        failed.append(context.statement or "")

    sa.event.listen(engine, "handle_error", record)
    try:
        with pytest.raises(sa.exc.ProgrammingError, match="models"):
            worker_db.write_results(engine, [result("a")])
        assert len(failed) == 1  # raised at once, not retried
        with pytest.raises(sa.exc.ProgrammingError):
            worker_db.start_delivery(engine, "t", None, 1)
        assert len(failed) == 2
    finally:
        sa.event.remove(engine, "handle_error", record)


def test_postgres_urls_use_psycopg2():
    assert normalise_url("postgresql://u:p@h/db").startswith("postgresql+psycopg2://u:p@")
    assert normalise_url("postgres://h/db").startswith("postgresql+psycopg2://")
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_iter_results_filters(engine):
    worker_db.write_results(engine, [result("s3://b/100%_off/1.jpg"), result("s3://b/100x/2.jpg"),
                                     result("s3://b/100%_off/3.jpg", status="failed")])
    by_prefix = [r["uri"] for r in producer_db.iter_results(engine, uri_prefix="s3://b/100%_")]
    assert by_prefix == ["s3://b/100%_off/1.jpg", "s3://b/100%_off/3.jpg"]  # % and _ literal
    model = stored_model(engine).id
    failed = list(producer_db.iter_results(engine, status="failed", model_id=model, reason=None))
    assert [r["uri"] for r in failed] == ["s3://b/100%_off/3.jpg"]
    assert producer_db.failed_labelsets(engine, stored_model(engine).id) == ["ls"]
    assert producer_db.failed_labelsets(engine, stored_model(engine).id, "not-found") == []


def test_migrations_match_the_tables(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    # One head (alembic refuses to name one otherwise), and the database is at it.
    current, head = migrate.revisions(str(engine.url.render_as_string(hide_password=False)))
    assert current == head


@pytest.mark.parametrize("fixture", ["sqlite_url", "pg_url"])
def test_migrate_down_and_up_again_keeps_results(fixture: str, request: pytest.FixtureRequest):
    url = request.getfixturevalue(fixture)
    engine = engine_for(url)
    worker_db.write_results(engine, [result("s3://b/1.jpg"), result("/商品/2.jpg")])
    with engine.begin() as conn:
        producer_db.claim_pending(conn, [Item("s3://b/3.jpg")], "m", "ls", "r1", 60)
    migrate.downgrade(url, "0001")
    assert migrate.revisions(url)[0] == "0001"
    columns = {c["name"] for c in sa.inspect(engine).get_columns("results")}
    assert "uri_hash" not in columns and "runtime" not in columns
    migrate.upgrade(url)
    stored = all_rows(engine)
    assert [(r.uri, r.uri_hash) for r in stored] == [(u, uri_hash(u)) for u in
                                                     ("/商品/2.jpg", "s3://b/1.jpg")]
    with engine.connect() as conn:
        assert conn.execute(sa.select(pending.c.uri, pending.c.uri_hash)).all() == [
            ("s3://b/3.jpg", uri_hash("s3://b/3.jpg"))]
    migrate.downgrade(url, "base")
    assert not sa.inspect(engine).has_table("results")
    assert migrate.revisions(url)[0] is None
    migrate.upgrade(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


SIGNED = "https://cdn.example.com/1.jpg?w=2&X-Amz-Date={d}&X-Amz-Signature={s}"


def test_uris_are_stored_without_secrets_and_signed_again_is_one_image(engine):
    worker_db.write_results(engine, [
        result(SIGNED.format(d="20261123", s="night1sig"), status="failed"),
        result("https://bob:hunter2@img.example.com/2.jpg"),
        result("https://T0KEN@img.example.com/3.jpg"), result("s3://b/4.jpg")])
    worker_db.write_results(engine, [result(SIGNED.format(d="20261124", s="night2sig"))])
    stored = {r.uri: r for r in all_rows(engine)}
    assert sorted(stored) == ["https://cdn.example.com/1.jpg?w=2",
                              "https://img.example.com/2.jpg", "https://img.example.com/3.jpg",
                              "s3://b/4.jpg"]
    assert [(u, r.signed) for u, r in sorted(stored.items())] == [
        ("https://cdn.example.com/1.jpg?w=2", True), ("https://img.example.com/2.jpg", True),
        ("https://img.example.com/3.jpg", True), ("s3://b/4.jpg", False)]
    assert stored["https://cdn.example.com/1.jpg?w=2"].status == "done"  # one image, done
    with engine.begin() as conn:  # the producer sees tonight's URL as already tagged
        items = [Item(SIGNED.format(d="20261125", s="night3sig"), version="v1")]
        assert producer_db.due_items(conn, items, stored_model(engine).id, "ls").items == []
        assert producer_db.claim_pending(conn, [Item("https://T0KEN@x.example/5.jpg")], "m",
                                         "ls", "r2", 60)
        assert conn.scalar(sa.select(pending.c.uri)) == "https://x.example/5.jpg"


def older_schema(fixture: str, request: pytest.FixtureRequest, revision: str
                 ) -> tuple[str, sa.Engine, sa.TableClause]:
    """A database at an older revision, and the results columns every revision had."""
    url = request.getfixturevalue(fixture)
    migrate.downgrade(url, revision)
    return url, engine_for(url), sa.table("results", sa.column("labels", sa.JSON()), *(
        sa.column(c) for c in ("uri", "uri_hash", "model", "labelset_id", "status",
                               "updated_at", "top_label")))


@pytest.mark.parametrize("fixture", ["sqlite_url", "pg_url"])
def test_a_done_row_without_labels_is_impossible(fixture: str, request: pytest.FixtureRequest):
    url, engine, old = older_schema(fixture, request, "0005")
    empty = {"model": "m", "labelset_id": "ls", "labels": [], "status": "done"}
    with engine.begin() as conn:  # what an earlier release stored for copies of failing bytes
        conn.execute(old.insert(), [{**empty, "uri": "a", "uri_hash": "a", "top_label": None},
                                    {**empty, "uri": "b", "uri_hash": "b", "top_label": "猫"}])
    migrate.upgrade(url)
    rows = {r.uri: r for r in all_rows(engine)}
    assert (rows["a"].status, rows["a"].reason) == ("failed", "internal-error")
    assert "retry-failed" in rows["a"].error and rows["b"].status == "done"
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(old.insert(), [{**empty, "uri": "c", "uri_hash": "c", "top_label": None}])


@pytest.mark.parametrize("fixture", ["sqlite_url", "pg_url"])
def test_the_migration_scrubs_stored_secrets(fixture: str, request: pytest.FixtureRequest):
    url, engine, old = older_schema(fixture, request, "0002")
    plain = {"model": "m", "labelset_id": "ls", "labels": []}

    def row(uri: str, status: str, day: int) -> dict[str, Any]:
        return {**plain, "uri": uri, "uri_hash": hashlib.sha256(uri.encode()).hexdigest(),
                "status": status, "updated_at": datetime(2026, 11, day, tzinfo=UTC),
                "top_label": "台灯" if status == "done" else None}

    with engine.begin() as conn:
        conn.execute(old.insert(), [
            row(SIGNED.format(d="1", s="aaa"), "done", 1),  # an older done result ...
            row(SIGNED.format(d="2", s="bbb"), "failed", 2),  # ... beats a newer failure
            row("https://bob:hunter2@img.example.com/2.jpg", "failed", 1),
            row("https://img.example.com/2.jpg", "failed", 3),  # the later one wins
            row("s3://b/4.jpg?versionId=1", "done", 1)])
        conn.execute(sa.table("pending", *(sa.column(c) for c in (
            "uri", "uri_hash", "model", "labelset_id", "enqueued_at"))).insert().values(
            uri="https://T0KEN@x.example/5.jpg", uri_hash="0" * 64, model="m",
            labelset_id="ls", enqueued_at=datetime(2026, 11, 1, tzinfo=UTC)))
    migrate.upgrade(url)
    stored = {r.uri: r for r in all_rows(engine)}
    assert sorted(stored) == ["https://cdn.example.com/1.jpg?w=2",
                              "https://img.example.com/2.jpg", "s3://b/4.jpg?versionId=1"]
    first = stored["https://cdn.example.com/1.jpg?w=2"]
    assert (first.status, first.signed) == ("done", True)
    assert first.uri_hash == uri_hash(SIGNED.format(d="3", s="ccc"))
    assert stored["https://img.example.com/2.jpg"].updated_at.day == 3
    assert not stored["s3://b/4.jpg?versionId=1"].signed
    with engine.connect() as conn:
        assert conn.execute(sa.select(pending.c.uri, pending.c.uri_hash)).all() == [
            ("https://x.example/5.jpg", uri_hash("https://x.example/5.jpg"))]


NESTED = ("https://shop.example/i.png?redirect=https%3A%2F%2Fu%3APASSWORD%40cdn.example%2Fa.jpg"
          "%3Fsig%3DSECRET&w=2")


@pytest.mark.parametrize("fixture", ["sqlite_url", "pg_url"])
def test_stored_urls_inside_parameters_lose_their_secrets(fixture: str,
                                                          request: pytest.FixtureRequest):
    """Rows an earlier release stored with a URL inside a parameter, password and signature
    in it, are rewritten and hashed again, and keep one row per image."""
    url, engine, old = older_schema(fixture, request, "0006")
    plain = {"model": "m", "labelset_id": "ls", "labels": [{"label": "台灯", "score": 0.9}],
             "top_label": "台灯"}
    stored = "https://shop.example/i.png?redirect=https%3A%2F%2Fcdn.example%2Fa.jpg&w=2"
    with engine.begin() as conn:
        conn.execute(old.insert(), [
            {**plain, "uri": NESTED, "uri_hash": hashlib.sha256(NESTED.encode()).hexdigest(),
             "status": "done", "updated_at": datetime(2026, 11, 2, tzinfo=UTC)},
            {**plain, "uri": stored, "uri_hash": uri_hash(stored), "status": "failed",
             "top_label": None, "updated_at": datetime(2026, 11, 3, tzinfo=UTC)}])
        conn.execute(sa.table("pending", *(sa.column(c) for c in (
            "uri", "uri_hash", "model", "labelset_id", "enqueued_at"))).insert().values(
            uri=NESTED.replace("a.jpg", "b.jpg"), uri_hash="0" * 64, model="m",
            labelset_id="other", enqueued_at=datetime(2026, 11, 1, tzinfo=UTC)))
    migrate.upgrade(url)
    rows = all_rows(engine)
    assert [(r.uri, r.status, r.signed) for r in rows] == [(stored, "done", True)]
    assert rows[0].uri_hash == uri_hash(NESTED) == uri_hash(stored)
    with engine.connect() as conn:
        marks = conn.execute(sa.select(pending.c.uri, pending.c.uri_hash)).all()
    assert marks == [(stored.replace("a.jpg", "b.jpg"), uri_hash(NESTED.replace("a.jpg", "b.jpg")))]
    text = repr(rows) + repr(marks)
    assert "PASSWORD" not in text and "SECRET" not in text


def test_a_forked_child_opens_its_own_connection(pg_url):
    # Prefork pool children are forked after the parent used the database: sharing its pooled
    # socket garbles the protocol once two processes (or a killed child and the next) use it.
    def backend_pid() -> int:
        with engine_for(pg_url).connect() as conn:
            return conn.scalar(sa.text("SELECT pg_backend_pid()"))

    parent = backend_pid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.write(write, str(backend_pid()).encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        in_child = pipe.read()
    assert os.waitpid(child, 0)[1] == 0
    assert in_child and int(in_child) != parent
    assert backend_pid() == parent  # the parent keeps its own


@pytest.mark.parametrize("fixture", ["sqlite_url", "pg_url"])
def test_rows_named_before_weights_are_kept_and_only_older_files_adopt_them(
        fixture: str, request: pytest.FixtureRequest):
    """Migration 0007: results, kept and text embeddings stored under a model's name belong to
    a model of unknown weights; a worker whose files changed since the first of them tags its
    images again, one whose files are older than that takes them over."""
    url, engine, _ = older_schema(fixture, request, "0006")
    content, vector = bytes(range(32)), np.ones(8, np.float32) / np.sqrt(8)
    old = sa.table("results", sa.column("labels", sa.JSON()), *(sa.column(c) for c in (
        "uri", "uri_hash", "model", "labelset_id", "status", "top_label", "source_version",
        "content_sha256", "runtime")))
    row = {"model": "m", "labelset_id": "ls", "status": "done", "top_label": "猫",
           "labels": [{"label": "猫", "score": 0.9}], "source_version": "v1",
           "content_sha256": content.hex()}
    with engine.begin() as conn:
        conn.execute(old.insert(), [
            {**row, "uri": "s3://b/1.jpg", "uri_hash": uri_hash("s3://b/1.jpg"),
             "runtime": "torch float32 cpu"},
            # Scored from a kept embedding on a message's word: not what its fetch found.
            {**row, "uri": "/etc/shadow", "uri_hash": uri_hash("/etc/shadow"),
             "runtime": KEPT_RUNTIME}])
        conn.execute(sa.text("INSERT INTO embedding_models (id, model, dim) VALUES (1, 'm', 8)"))
        conn.execute(sa.text("INSERT INTO embeddings (key, model_id, sha256, vector) VALUES "
                             "(:k, 1, :s, :v)"), {"k": key_of(content), "s": content,
                                                  "v": pack(vector)})
        conn.execute(sa.text("INSERT INTO text_embeddings (model, labelset_id, encoder, rows, "
                             "dim, data) VALUES ('m', 'ls', 'fake', 1, 8, :d)"),
                     {"d": vector.tobytes()})
    migrate.upgrade(url)
    models.forget()
    with engine.connect() as conn:
        assert conn.execute(sa.select(images.c.uri)).scalars().all() == ["s3://b/1.jpg"]
    items = [Item("s3://b/1.jpg", version="v1")]
    changed = models.register(engine, Weights("f" * 64, datetime.now(UTC) + timedelta(1)), "m")
    with engine.connect() as conn:
        assert producer_db.due_items(conn, items, changed.id, "ls").items == items
    assert embeddings.lookup(engine, changed, [content.hex()]) == {}
    assert labelsets.load_text_embeddings(engine, changed.id, "ls", "fake") is None
    older = models.register(engine, Weights("e" * 64, datetime(2000, 1, 1, tzinfo=UTC)), "m")
    assert older.id not in (changed.id, None) and older.weights == "e" * 64
    with engine.connect() as conn:
        assert producer_db.due_items(conn, items, older.id, "ls").items == []
    assert list(embeddings.lookup(engine, older, [content.hex()])) == [content.hex()]
    assert labelsets.load_text_embeddings(engine, older.id, "ls", "fake")[2] == vector.tobytes()
    assert {r.uri: r.model_id for r in all_rows(engine)} == {"/etc/shadow": older.id,
                                                              "s3://b/1.jpg": older.id}
