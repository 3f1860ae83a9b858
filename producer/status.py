"""The live picture: broker queue depth (waiting and reserved) and result counts, per run too."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import Engine

from worker.store import pending, results, runs

RATE_WINDOW = timedelta(minutes=5)


def queue_depth(app: Celery, queue: str) -> dict[str, int]:
    """Messages waiting in the queue, and (on Redis) delivered but not yet acknowledged."""
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)
        channel = conn.default_channel
        waiting = channel.queue_declare(queue=queue, passive=False).message_count
        reserved = 0
        if conn.transport.driver_type == "redis":
            # Flower counts LLEN only; chunks being worked on sit in kombu's "unacked" hash.
            reserved = int(channel.client.hlen(channel.unacked_key))
        return {"waiting": int(waiting), "reserved": reserved}


def _counts(conn: sa.Connection, table: sa.Table, column: sa.Column, **where: Any
            ) -> dict[str, int]:
    query = sa.select(column, sa.func.count()).group_by(column)
    for name, value in where.items():
        if value is not None:
            query = query.where(table.c[name] == value)
    return {str(key): int(n) for key, n in conn.execute(query)}


def result_counts(engine: Engine, run_id: str | None = None) -> dict[str, Any]:
    """done / failed (by reason) / pending, for one run or for everything."""
    with engine.connect() as conn:
        by_status = _counts(conn, results, results.c.status, run_id=run_id)
        reasons = _counts(conn, results, results.c.reason, run_id=run_id, status="failed")
        waiting = conn.scalar(sa.select(sa.func.count()).select_from(pending).where(
            pending.c.run_id == run_id) if run_id else sa.select(sa.func.count()).select_from(
            pending))
        since = datetime.now(UTC) - RATE_WINDOW
        recent = conn.scalar(sa.select(sa.func.count()).select_from(results).where(
            results.c.updated_at >= since, *([results.c.run_id == run_id] if run_id else [])))
    rate = recent / RATE_WINDOW.total_seconds()
    return {"done": by_status.get("done", 0), "failed": by_status.get("failed", 0),
            "failed_by_reason": reasons, "pending": int(waiting or 0),
            "images_per_second": round(rate, 2),
            "eta_seconds": round(waiting / rate) if rate and waiting else None}


def run_info(engine: Engine, run_id: str | None) -> dict[str, Any] | None:
    """The run with this id, or the latest run."""
    query = sa.select(runs)
    query = query.where(runs.c.id == run_id) if run_id else query.order_by(
        runs.c.started_at.desc()).limit(1)
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    if row is None:
        return None
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def status(app: Celery, engine: Engine, queue: str, run_id: str | None = None) -> dict[str, Any]:
    depth = queue_depth(app, queue)
    report = {"queue": queue, "queue_depth": depth["waiting"], "reserved": depth["reserved"]}
    report.update(result_counts(engine, run_id))
    report["run"] = run_info(engine, run_id)
    return report


def wait(engine: Engine, run_id: str | None, timeout: float, interval: float = 2.0
         ) -> dict[str, Any]:
    """Block until nothing of the run (default: the latest) is pending; returns its counts."""
    info = run_info(engine, run_id)
    if info is None:
        raise LookupError(f"no run {run_id}" if run_id else "no run yet")
    deadline = time.monotonic() + timeout
    while True:
        counts = result_counts(engine, info["id"])
        if counts["pending"] == 0 and run_info(engine, info["id"])["finished_at"]:
            return {"run": info["id"], **counts}
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {info['id']} still has {counts['pending']} pending images "
                               f"after {timeout:.0f}s")
        time.sleep(interval)
