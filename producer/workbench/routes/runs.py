"""Runs: the list (figures as `producer status` counts them), one run's labels and failures.

Counting a run's images scans its results: the counts come from producer/workbench/counted.py
(made off the request path, kept a while); the pages themselves read recorded runs only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from producer.workbench.pages import RUN_ID, after_id, bench, checked, render
from worker.db import browse, learned
from worker.db import report as figures
from worker.db import status as db_status
from worker.db.labelsets import load_labelset
from worker.db.schema import results

RUNS = 50  # newest runs listed
FAILURES = 100  # per page


def recorded(request: Request) -> Mapping[str, Any]:
    """The run of the path as recorded (404 if there is none); its images not counted."""
    run_id = checked(request.path_params["run"], RUN_ID, "run")
    with bench(request).engine.connect() as conn:
        run = browse.run_row(conn, run_id)
    if run is None:
        raise HTTPException(404, f"no run {run_id}")
    return run


def runs_page(request: Request) -> Response:
    engine = bench(request).engine
    with engine.connect() as conn:
        rows = browse.latest_runs(conn, RUNS)
    counts, at = bench(request).counted.get("runs", lambda: {
        run["id"]: run for run in db_status.find_runs(engine, limit=RUNS)})
    return render(request, "runs.html", runs=[{**row, **(counts or {}).get(row["id"], {})}
                                              for row in rows], counted_at=at)


def _count(engine: Any, run_id: str) -> dict[str, Any]:
    """A run's figures, as `producer status --run` counts them, its labels and failures."""
    with engine.connect() as conn:
        return {"run": db_status.find_runs(engine, run_id)[0],
                "labels": browse.label_counts(conn, run_id),
                "reasons": figures.failure_counts(conn, [results.c.run_id == run_id])}


def run_page(request: Request) -> Response:
    run = recorded(request)
    engine = bench(request).engine
    counted, at = bench(request).counted.get(("run", run["id"]), lambda: _count(engine,
                                                                                run["id"]))
    return render(request, "run.html", run=counted["run"] if counted else run,
                  labels=counted["labels"] if counted else {},
                  reasons=counted["reasons"] if counted else {}, counted_at=at,
                  labelset=load_labelset(engine, run["labelset_id"]),
                  version=learned.version(engine, run["labelset_id"]))


def failures_page(request: Request) -> Response:
    run = recorded(request)
    reason = request.query_params.get("reason") or None
    with bench(request).engine.connect() as conn:
        rows = browse.failures(conn, run["id"], reason, after_id(request.query_params.get(
            "after")), FAILURES)
    more = rows[-1]["id"] if len(rows) == FAILURES else None
    return render(request, "failures.html", run=run, reason=reason, rows=rows, more=more)


routes = [
    Route("/", runs_page, name="runs"),
    Route("/runs/{run}", run_page, name="run"),
    Route("/runs/{run}/failures", failures_page, name="failures"),
]
