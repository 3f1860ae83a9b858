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
            *([pending.c.run_id == run_id] if run_id else [])))
        now = datetime.now(UTC)
        recent, first = conn.execute(
            sa.select(sa.func.count(), sa.func.min(results.c.updated_at)).where(
                results.c.updated_at >= now - RATE_WINDOW,
                *([results.c.run_id == run_id] if run_id else []))).one()
    rate = recent / _seconds_since(first, now) if recent else 0.0
    return {"done": by_status.get("done", 0), "failed": by_status.get("failed", 0),
            "failed_by_reason": reasons, "pending": int(waiting or 0),
            "images_per_second": round(rate, 2),
            "eta_seconds": round(waiting / rate) if rate and waiting else None}


def _seconds_since(first: datetime, now: datetime) -> float:
    """The rate window actually covered: a run that began a minute ago has a minute of results."""
    if first.tzinfo is None:  # SQLite keeps UTC without a zone
        first = first.replace(tzinfo=UTC)
    return max(1.0, min(RATE_WINDOW.total_seconds(), (now - first).total_seconds()))


def _jsonable(row: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def run_info(engine: Engine, run_id: str | None) -> dict[str, Any] | None:
    """The run with this id (or the latest run) and its live done / failed / pending counts."""
    query = sa.select(runs)
    query = query.where(runs.c.id == run_id) if run_id else query.order_by(
        runs.c.started_at.desc()).limit(1)
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    if row is None:
        return None
    return _with_outcomes(engine, [_jsonable(row)])[0]


def recent_runs(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs, newest first, each with its live counts and state."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit))
        found = [_jsonable(row) for row in rows.mappings()]
    return _with_outcomes(engine, found)


def _with_outcomes(engine: Engine, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add done / failed (results whose run_id is the run), pending and a state to each run.

    An image tagged again by a later run counts for the later run only.
    """
    ids = [r["id"] for r in found]
    if not ids:
        return found
    with engine.connect() as conn:
        outcomes = conn.execute(sa.select(results.c.run_id, results.c.status, sa.func.count())
                                .where(results.c.run_id.in_(ids))
                                .group_by(results.c.run_id, results.c.status))
        by_run: dict[tuple[str, str], int] = {(r, s): int(n) for r, s, n in outcomes}
        waiting = dict(conn.execute(sa.select(pending.c.run_id, sa.func.count())
                                    .where(pending.c.run_id.in_(ids))
                                    .group_by(pending.c.run_id)).all())
    for run in found:
        run["done"] = by_run.get((run["id"], "done"), 0)
        run["failed"] = by_run.get((run["id"], "failed"), 0)
        run["pending"] = int(waiting.get(run["id"], 0))
        run["state"] = ("listing" if run["finished_at"] is None
                        else "running" if run["pending"] else "complete")
    return found


def status(app: Celery, engine: Engine, queue: str, run_id: str | None = None) -> dict[str, Any]:
    """The whole picture; with ``run_id`` the counts are the run's, else everything's."""
    run = run_info(engine, run_id)
    if run_id and run is None:
        raise LookupError(f"no run {run_id}")
    depth = queue_depth(app, queue)
    return {"queue": queue, "queue_depth": depth["waiting"], "reserved": depth["reserved"],
            **result_counts(engine, run_id), "run": run}


def wait(engine: Engine, run_id: str | None, timeout: float, interval: float = 2.0,
         every_run: bool = False) -> dict[str, Any]:
    """Block until nothing of the run (default: the latest) is pending; returns its counts.

    With ``every_run``: until no image of any run is pending (several label sets in one night).
    """
    info = None if every_run else run_info(engine, run_id)
    if info is None and not every_run:
        raise LookupError(f"no run {run_id}" if run_id else "no run yet")
    name = "all runs" if info is None else f"run {info['id']}"
    deadline = time.monotonic() + timeout
    while True:
        counts = result_counts(engine, info and info["id"])
        listed = info is None or (run_info(engine, info["id"]) or {}).get("finished_at")
        if counts["pending"] == 0 and listed:
            return {"run": info["id"] if info else "all", **counts}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} still has {counts['pending']} pending images "
                               f"after {timeout:.0f}s")
        time.sleep(interval)
