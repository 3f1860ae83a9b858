"""The figures behind `producer status`, `runs` and `wait`: counts, rates, runs, their state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.db import models
from worker.db.schema import deliveries, pending, pending_ranges, results, runs

RATE_WINDOW = timedelta(minutes=5)


def result_counts(engine: Engine, run_id: str | None = None) -> dict[str, Any]:
    """done / failed (by reason) / pending / in flight / recent rate, for a run or everything."""
    by_run = [results.c.run_id == run_id] if run_id else []
    with engine.connect() as conn:
        # Pending first: an image answered between two reads counts as done, never as neither
        # (`wait` returns at no pending and prints the done count).
        waiting = _pending(conn, [run_id] if run_id else None).get(run_id, 0)
        by_status: dict[str, int] = {}
        by_model: dict[int, int] = {}
        for status, model_id, count in conn.execute(
                sa.select(results.c.status, results.c.model_id, sa.func.count()).where(*by_run)
                .group_by(results.c.status, results.c.model_id)):
            by_status[status] = by_status.get(status, 0) + count
            by_model[model_id] = by_model.get(model_id, 0) + count
        reasons = dict(conn.execute(sa.select(results.c.reason, sa.func.count())
                                    .where(results.c.status == "failed", *by_run)
                                    .group_by(results.c.reason)).all())
        in_flight = conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(deliveries.c.images), 0))
                                .where(deliveries.c.finished_at.is_(None),
                                       *([deliveries.c.run_id == run_id] if run_id else [])))
        current = datetime.now(UTC)
        recent, first = conn.execute(
            sa.select(sa.func.count(), sa.func.min(results.c.updated_at)).where(
                results.c.updated_at >= current - RATE_WINDOW, *by_run)).one()
    rate = recent / _seconds_since(first, current) if recent else 0.0
    return {"done": int(by_status.get("done", 0)), "failed": int(by_status.get("failed", 0)),
            "failed_by_reason": {str(k): int(v) for k, v in reasons.items()},
            "weights": by_weights(engine, by_model), "pending": int(waiting or 0),
            "in_flight": min(int(in_flight or 0), int(waiting or 0)),
            "images_per_second": round(rate, 2),
            "eta_seconds": round(waiting / rate) if rate and waiting else None}


def _seconds_since(first: datetime, current: datetime) -> float:
    """The rate window actually covered: a run that began a minute ago has a minute of results."""
    if first.tzinfo is None:  # SQLite keeps UTC without a zone
        first = first.replace(tzinfo=UTC)
    return max(1.0, min(RATE_WINDOW.total_seconds(), (current - first).total_seconds()))


def find_runs(engine: Engine, run_id: str | None = None, limit: int = 1) -> list[dict[str, Any]]:
    """The run with this id, or the latest ``limit`` runs, each with live counts and state."""
    query = sa.select(runs)
    query = (query.where(runs.c.id == run_id) if run_id
             else query.order_by(runs.c.started_at.desc()).limit(limit))
    with engine.connect() as conn:
        found = [_jsonable(row) for row in conn.execute(query).mappings()]
        ids = [r["id"] for r in found]
        waiting = _pending(conn, ids)  # first, as in result_counts
        outcomes = conn.execute(sa.select(results.c.run_id, results.c.status, results.c.reason,
                                          results.c.model_id, sa.func.count())
                                .where(results.c.run_id.in_(ids))
                                .group_by(results.c.run_id, results.c.status, results.c.reason,
                                          results.c.model_id))
        counted: dict[str, dict[str, Any]] = {i: {"done": 0, "failed": 0, "failed_by_reason": {},
                                                   "weights": {}} for i in ids}
        for run, status, reason, model_id, count in outcomes:
            counted[run][status] += count
            if status == "failed":
                reasons = counted[run]["failed_by_reason"]
                reasons[reason] = reasons.get(reason, 0) + count
            counted[run]["weights"][model_id] = counted[run]["weights"].get(model_id, 0) + count
    for run in found:
        run.update(counted[run["id"]], pending=int(waiting.get(run["id"], 0)))
        run["weights"] = by_weights(engine, run["weights"])
        run["skipped_by_reason"] = run.get("skipped_by_reason") or {}
        run["state"] = run_state(run)
    return found


def pending_by_model(engine: Engine) -> dict[str, int]:
    """Images not answered yet, by model: each model queue's true backlog.

    A pending mark is written before its chunk is sent and deleted with the image's result, so
    this counts the images of chunks waiting in the queue, prefetched or running on a worker
    (kombu's unacked) and waiting for a retry's countdown alike; the broker's list holds only
    the first of them.
    """
    with engine.connect() as conn:
        return {str(model): count for model, count in _pending(conn, None, by_model=True).items()}


def by_weights(engine: Engine, counts: Mapping[int, int]) -> dict[str, int]:
    """Result counts by model id -> by the short digest of the weights that computed them."""
    known = models.by_id(engine) if counts else {}
    shown: dict[str, int] = {}
    for model_id, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        name = known[model_id].short if model_id in known else "unknown"
        shown[name] = shown.get(name, 0) + count
    return shown


def _pending(conn: Connection, run_ids: Sequence[str] | None,
             by_model: bool = False) -> dict[str | None, int]:
    """Images not answered yet, by run (under None: of every run) or by model: pending marks,
    and the images of relabel ranges (their run's model)."""
    counted: dict[str | None, int] = {}
    for table, images in ((pending, sa.func.count()),
                          (pending_ranges, sa.func.coalesce(sa.func.sum(pending_ranges.c.images),
                                                            0))):
        if by_model:
            key, source = ((pending.c.model, pending) if table is pending else
                           (runs.c.model, table.join(runs, runs.c.id == table.c.run_id)))
            query = sa.select(key, images).select_from(source).group_by(key)
        elif run_ids is None:
            query = sa.select(sa.null(), images).select_from(table)
        else:
            query = (sa.select(table.c.run_id, images).select_from(table)
                     .where(table.c.run_id.in_(run_ids)).group_by(table.c.run_id))
        for key_value, count in conn.execute(query):
            counted[key_value] = counted.get(key_value, 0) + int(count or 0)
    return counted


def run_state(run: Mapping[str, Any]) -> str:
    """listing -> running -> complete; ``stopped`` when the listing ended early or the run
    was withdrawn with images unanswered."""
    if run["finished_at"] is None and not run.get("cancelled_at"):
        return "listing"
    if run.get("error"):
        return "stopped"
    return "running" if run["pending"] else "complete"


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
