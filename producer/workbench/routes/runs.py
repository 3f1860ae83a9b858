"""Runs: the list (figures as `producer status` gives them), one run's labels and failures."""

from __future__ import annotations

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


def _run(request: Request) -> dict:
    run_id = checked(request.path_params["run"], RUN_ID, "run")
    found = db_status.find_runs(bench(request).engine, run_id)
    if not found:
        raise HTTPException(404, f"no run {run_id}")
    return found[0]


def runs_page(request: Request) -> Response:
    return render(request, "runs.html", runs=db_status.find_runs(bench(request).engine,
                                                                 limit=RUNS))


def run_page(request: Request) -> Response:
    run = _run(request)
    engine = bench(request).engine
    where = [results.c.run_id == run["id"]]
    with engine.connect() as conn:
        labels = figures.label_counts(conn, where)
        reasons = figures.failure_counts(conn, where)
    labelset = load_labelset(engine, run["labelset_id"])
    return render(request, "run.html", run=run, labels=labels, reasons=reasons,
                  labelset=labelset, version=learned.version(engine, run["labelset_id"]))


def failures_page(request: Request) -> Response:
    run = _run(request)
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
