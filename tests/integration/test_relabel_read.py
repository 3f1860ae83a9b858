"""Relabel's read on PostgreSQL: its cost does not grow with the number of label sets, and a read
that runs over its time limit ends its range with one line that says so."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import sqlalchemy as sa

from testkit.models import stored_model
from worker.core.contract import Item, Result, Span
from worker.core.embedding import KEY_MAX, KEY_MIN, sha256_of, spans
from worker.db import embeddings, writes
from worker.db import runs as producer_db
from worker.db import status as db_status
from worker.db.schema import engine_for
from worker.handlers.relabel import relabel

from .test_kept import SECOND, make_settings, worker_parts

IMAGES = 2000
COPIED = ("uri, uri_hash, signed, model, model_id, item_key, source_version, content_sha256, "
          "status, labels, top_label, top_score, runtime")


def seed(engine: sa.Engine, run_id: str = "r0") -> None:
    """Done results of one label set with kept embeddings, as workers write them."""
    vectors = np.random.default_rng(0).standard_normal((IMAGES, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    writes.write_results(engine, [
        Result(Item(f"s3://b/{n}.jpg", key=str(n), version="v1"), "m", "ls0", run_id=run_id,
               content_sha256=sha256_of(str(n).encode()), embedding=vector,
               labels=[{"label": "猫", "score": 0.9}])
        for n, vector in enumerate(vectors)], keep_embeddings=True)


def more_labelsets(engine: sa.Engine, count: int) -> None:
    """Every image gets results of ``count`` more label sets (relabel runs of old)."""
    with engine.begin() as conn:
        for n in range(1, count + 1):
            conn.exec_driver_sql(f"INSERT INTO results ({COPIED}, labelset_id, run_id) SELECT "
                                 f"{COPIED}, 'ls{n}', 'r{n}' FROM results "
                                 "WHERE labelset_id = 'ls0'")
        conn.exec_driver_sql("ANALYZE")


def explained(engine: sa.Engine, scope: embeddings.Scope) -> dict[str, Any]:
    """The read of a range (a quarter of the keys) as the workers run it: rows, blocks and the
    scans of its plan, (node type, table)."""
    lo, hi = next(spans(4))
    with engine.begin() as conn:
        embeddings.limit_read(conn, timeout=600)
        query = embeddings.images_query(conn, scope, lo, hi)
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        (plan,) = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}").scalar()
    top = plan["Plan"]
    return {"rows": top["Actual Rows"], "blocks": top["Shared Hit Blocks"]
            + top["Shared Read Blocks"], "scans": set(_scans(top))}


def _scans(node: dict[str, Any]) -> Iterator[tuple[str, str]]:
    if "Relation Name" in node:
        yield node["Node Type"], node["Relation Name"]
    for child in node.get("Plans", ()):
        yield from _scans(child)


def test_the_read_costs_the_same_with_one_label_set_or_seven(pg_url):
    """Issue 25 item 3: with 7 label sets the read was a nested loop over a scan of results
    (3x the blocks of one label set at 3,000 images, 18x the time); it reads no result now."""
    engine = engine_for(pg_url)
    seed(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    scope = embeddings.Scope(stored_model(engine))
    one = explained(engine, scope)
    one_run = explained(engine, embeddings.Scope(scope.model, run="r0"))
    more_labelsets(engine, 6)
    seven = explained(engine, scope)
    seven_run = explained(engine, embeddings.Scope(scope.model, run="r0"))
    assert one["rows"] == seven["rows"] == one_run["rows"] == seven_run["rows"] > IMAGES / 8
    assert {table for _, table in seven["scans"]} == {"embeddings", "images"}, seven
    assert not any(kind == "Seq Scan" for kind, _ in seven["scans"] | seven_run["scans"])
    assert seven["blocks"] <= one["blocks"] * 1.05 + 10, (one, seven)
    # Only the images of one run: one more lookup per image, among its own few results.
    assert seven_run["blocks"] <= one_run["blocks"] * 1.5 + 10, (one_run, seven_run)


def test_a_read_over_its_time_limit_ends_the_range_with_one_line(pg_url, tmp_path, made):
    parts = worker_parts(made, make_settings(pg_url, tmp_path, TAGGER_READ_TIMEOUT="1"),
                         tmp_path)
    seed(parts.engine)
    span = Span("m", SECOND.id, "rl1", KEY_MIN, KEY_MAX)
    producer_db.create_run(parts.engine, "rl1", "relabel", "m", SECOND.id)
    producer_db.add_pending_ranges(parts.engine, [span], [IMAGES])
    producer_db.update_run(parts.engine, "rl1", finished=True)
    with parts.engine.connect() as holder:  # the read waits on it, past its time limit
        holder.exec_driver_sql("LOCK TABLE embeddings IN ACCESS EXCLUSIVE MODE")
        report = relabel(parts, span, "t1")
        holder.rollback()
    assert report["images"] == 0
    error = report["error"]
    assert len(error.splitlines()) == 1 and "TAGGER_READ_TIMEOUT=1 s" in error, error
    run = db_status.find_runs(parts.engine, "rl1")[0]
    assert (run["state"], run["pending"], run["error"]) == ("stopped", 0, error)
