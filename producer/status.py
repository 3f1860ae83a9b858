"""The live picture: queue depth, images done / failed / in flight / pending, and waiting."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from producer import sending
from worker.core.celeryconf import tagging_queue
from worker.core.errors import ConfigError
from worker.core.settings import Settings
from worker.db import status as db_status
from worker.db.schema import engine_for


def find_run(settings: Settings, run_id: str | None) -> dict[str, Any] | None:
    """The run with this id (ConfigError if there is none), or the latest run (or None)."""
    found = db_status.find_runs(engine_for(settings.database_url), run_id)
    if run_id and not found:
        raise ConfigError(f"no run {run_id}: `producer runs` lists them")
    return found[0] if found else None


def status(settings: Settings, run_id: str | None = None) -> dict[str, Any]:
    """The whole picture; with ``run_id`` the counts are the run's, else everything's."""
    run = find_run(settings, run_id)
    ours = backlogs(settings)[settings.model]
    counts = db_status.result_counts(engine_for(settings.database_url), run_id)
    return {"queue": ours["queue"], "queue_depth": ours["waiting"], "reserved": ours["reserved"],
            "backlog": ours["images"], **counts, "run": run}


def backlogs(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each model queue's true backlog, by model: this installation's model and every model
    with images pending.

    ``images``: pending images (queued, prefetched, running or waiting for a retry), what the
    fleet still has to do; ``waiting`` and ``reserved``: the broker's chunks in the list and in
    workers' hands. `producer status` and the exporter's gauges both read them here.
    """
    pending = db_status.pending_by_model(engine_for(settings.database_url))
    queues = {model: tagging_queue(dataclasses.replace(settings, model=model))
              for model in sorted({settings.model, *pending})}
    depths = sending.queue_depths(settings, list(queues.values()))
    return {model: {"queue": queue, "images": pending.get(model, 0), **depths[queue]}
            for model, queue in queues.items()}


def wait(settings: Settings, run_id: str | None, timeout: float, every_run: bool = False,
         interval: float = 1.0, on_progress: Callable[[dict[str, Any]], None] | None = None,
         stop: Callable[[], str | None] | None = None) -> dict[str, Any]:
    """Block until nothing of the run (default: the latest) is pending; returns its counts.

    With ``every_run``: until no image of any run is pending (several label sets in one night).
    ``on_progress`` gets the counts at each poll; ``stop`` may end the wait with a reason.
    """
    engine = engine_for(settings.database_url)
    run = None if every_run else find_run(settings, run_id)
    if run is None and not every_run:
        raise ConfigError("no run yet: `producer enqueue` starts one")
    name = "all runs" if run is None else f"run {run['id']}"
    deadline = time.monotonic() + timeout
    while True:
        counts = db_status.result_counts(engine, run and run["id"])
        current = db_status.find_runs(engine, run["id"])[0] if run else None
        counts["run"] = current["id"] if current else "all"
        counts["listing"] = bool(current and current["state"] == "listing")
        if on_progress:
            on_progress(counts)
        if counts["pending"] == 0 and not counts["listing"]:
            return counts
        reason = stop() if stop else None
        if reason:
            raise ConfigError(f"stopped waiting for {name}: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} still has {counts['pending']} pending images "
                               f"after {timeout:.0f}s")
        time.sleep(interval)
