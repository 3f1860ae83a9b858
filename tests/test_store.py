"""The results store on PostgreSQL and SQLite: idempotent upserts, pending marks, migrations."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from worker import store
from worker.errors import TransientError
from worker.store import Item, results


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> sa.Engine:
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return store.engine_for(request.getfixturevalue(fixture))


def row(uri: str, status: str = "done", score: float = 0.9, **extra: Any) -> dict[str, Any]:
    labels = [{"label": "台灯", "score": score}] if status == "done" else []
    return {"uri": uri, "model": "m", "labelset_id": "ls", "item_key": None,
            "source_version": "v1", "content_sha256": "ab" * 32, "status": status,
            "reason": None if status == "done" else "undecodable",
            "error": None if status == "done" else "bad", "labels": labels,
            "top_label": labels[0]["label"] if labels else None,
            "top_score": labels[0]["score"] if labels else None, "attempts": 1,
            "run_id": "r1", **extra}


def all_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(results).order_by(results.c.uri)))


def test_upsert_is_idempotent(engine):
    chunk = [row("s3://b/1.jpg"), row("s3://b/2.jpg"), row("s3://b/1.jpg", score=0.8)]
    store.write_results(engine, chunk)
    store.write_results(engine, chunk)
    stored = all_rows(engine)
    assert [r.uri for r in stored] == ["s3://b/1.jpg", "s3://b/2.jpg"]
    assert stored[0].labels == [{"label": "台灯", "score": 0.8}]


def test_failure_never_replaces_done_but_success_replaces_failure(engine):
    store.write_results(engine, [row("a"), row("b", status="failed")])
    store.write_results(engine, [row("a", status="failed"), row("b", score=0.7)])
    stored = {r.uri: r for r in all_rows(engine)}
    assert stored["a"].status == "done" and stored["a"].labels[0]["score"] == 0.9
    assert stored["b"].status == "done" and stored["b"].error is None


def test_top_label_query_uses_an_index(pg_url):
    engine = store.engine_for(pg_url)
    store.write_results(engine, [row(f"u{i}", score=i / 100) for i in range(100)])
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(conn.scalars(sa.text(
            "EXPLAIN SELECT uri FROM results WHERE top_label = '台灯' AND top_score > 0.5")))
        matches = conn.scalar(sa.text(
            "SELECT count(*) FROM results WHERE top_label = '台灯' AND top_score > 0.5"))
    assert "ix_results_top_label" in plan
    assert matches == 49


def test_pending_blocks_a_second_claim_until_written(engine):
    items = [Item("a", version="1"), Item("b", version="1")]
    with engine.begin() as conn:
        assert store.claim_pending(conn, items, "m", "ls", "run1", ttl_seconds=60) == items
        assert store.claim_pending(conn, items, "m", "ls", "run2", ttl_seconds=60) == []
    store.write_results(engine, [row("a")])  # answering an image clears its pending mark
    with engine.begin() as conn:
        assert store.claim_pending(conn, items, "m", "ls", "run3", ttl_seconds=60) == [items[0]]
        assert store.claim_pending(conn, items, "m", "ls", "run4", ttl_seconds=60,
                                   force=True) == items


def test_stale_pending_marks_expire(engine):
    items = [Item("a")]
    with engine.begin() as conn:
        store.claim_pending(conn, items, "m", "ls", "run1", ttl_seconds=60)
        assert store.claim_pending(conn, items, "m", "ls", "run2", ttl_seconds=0) == items


def test_due_items_compare_versions(engine):
    store.write_results(engine, [row("a"), row("b")])
    items = [Item("a", version="v1"), Item("b", version="v2"), Item("c", version="v1"),
             Item("a")]
    with engine.connect() as conn:
        due = store.due_items(conn, items, "m", "ls")
        assert [i.uri for i in due] == ["b", "c"]
        assert [i.uri for i in store.due_items(conn, items, "other-model", "ls")] == [
            "a", "b", "c", "a"]


def test_deliveries_are_counted(engine):
    assert [store.count_delivery(engine, "task-1") for _ in range(3)] == [1, 2, 3]
    assert store.count_delivery(engine, "task-2") == 1


def test_text_embeddings_round_trip(engine):
    assert store.load_text_embeddings(engine, "m", "ls") is None
    store.save_text_embeddings(engine, "m", "ls", 2, 3, b"\x00" * 24)
    store.save_text_embeddings(engine, "m", "ls", 2, 3, b"\x01" * 24)  # first writer wins
    assert store.load_text_embeddings(engine, "m", "ls") == (2, 3, b"\x00" * 24)


def test_unreachable_database_is_transient():
    engine = store.engine_for("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(TransientError, match="database unavailable"):
        store.count_delivery(engine, "t")


def test_postgres_urls_use_psycopg2():
    assert store.normalise_url("postgresql://u:p@h/db").startswith("postgresql+psycopg2://u:p@")
    assert store.normalise_url("postgres://h/db").startswith("postgresql+psycopg2://")
    assert store.normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_migrations_match_the_tables(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), store.metadata)
    assert diff == []
