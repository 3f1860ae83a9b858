"""A label set: its labels with corrections and thresholds, its learned versions (measured),
the learn button, and a version's changed images to review next."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from producer.learn.version import count_changes, learn_and_relabel
from producer.workbench.pages import (
    LABELSET_ID,
    PAGE,
    after_score,
    bench,
    checked,
    field_text,
    form,
    render,
    reviewer,
)
from producer.workbench.routes.galleries import photos
from worker.core.labels import LabelSet
from worker.db import browse, corrections, learned, thresholds
from worker.db import status as db_status
from worker.db.labelsets import load_labelset

LEARN_TIMEOUT = 6 * 3600.0  # seconds the relabel of a learned version may take


def _labelset(request: Request) -> LabelSet:
    labelset_id = checked(request.path_params["labelset"], LABELSET_ID, "label set")
    labelset = load_labelset(bench(request).engine, labelset_id)
    if labelset is None:
        raise HTTPException(404, f"no label set {labelset_id}")
    return labelset


def labelset_page(request: Request) -> Response:
    labelset = _labelset(request)
    engine = bench(request).engine
    root = learned.root_of(engine, labelset.id)
    return render(request, "labelset.html", labelset=labelset, root=root,
                  version=learned.version(engine, labelset.id),
                  versions=learned.versions(engine, root),
                  verdicts=corrections.counts(engine, root),
                  thresholds=thresholds.described(engine, labelset.id),
                  job=bench(request).jobs.latest.get(root),
                  proposed=request.query_params.get("proposed"))


async def set_thresholds(request: Request) -> Response:
    """A threshold set by hand (empty: none), or proposed for every reviewed label."""
    data = await form(request)
    labelset = await run_in_threadpool(_labelset, request)
    engine, who = bench(request).engine, reviewer(request)
    if data.get("action") == "propose":
        precision = _fraction(field_text(data, "precision"), "precision")
        root = await run_in_threadpool(learned.root_of, engine, labelset.id)
        found = await run_in_threadpool(thresholds.propose, engine, labelset.id, root,
                                        precision, who)
        return RedirectResponse(f"/labelsets/{labelset.id}?proposed={len(found)}", 303)
    label = field_text(data, "label")
    if label not in labelset.labels:
        raise HTTPException(400, "that label is not in the label set")
    raw = data.get("threshold")
    value = _fraction(raw, "threshold") if isinstance(raw, str) and raw.strip() else None
    await run_in_threadpool(thresholds.put, engine, labelset.id, label, value, who)
    return RedirectResponse(f"/labelsets/{labelset.id}#thresholds", 303)


def _fraction(raw: Any, what: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise HTTPException(400, f"{what} is a number from 0 to 1")
    return value


async def learn(request: Request) -> Response:
    """Start learning a new version from the corrections (the server's one learning job)."""
    await form(request)
    labelset = await run_in_threadpool(_labelset, request)
    b = bench(request)
    root = await run_in_threadpool(learned.root_of, b.engine, labelset.id)
    started = b.jobs.start(root, reviewer(request), lambda say: learn_and_relabel(
        b.settings, root, timeout=LEARN_TIMEOUT, echo=say))
    if started is None:
        raise HTTPException(409, "a label set is being learned already: wait for it")
    return RedirectResponse(f"/labelsets/{root}#learning", 303)


def changes_page(request: Request) -> Response:
    """A learned version's images whose label changed, per new label, least confident first."""
    labelset = _labelset(request)
    engine = bench(request).engine
    version = learned.version(engine, labelset.id)
    if version is None or version.run_id is None:
        raise HTTPException(404, "this label set is not a learned version that was scored")
    summary = version.changes
    if summary is None:
        run = db_status.find_runs(engine, version.run_id)
        if not run or run[0]["state"] != "complete":
            raise HTTPException(409, "its relabel run is not complete yet: reload later")
        summary = count_changes(engine, labelset.id, version.run_id, version.parent_id)
    label = request.query_params.get("label")
    rows, more = [], None
    if label:
        after = after_score(request.query_params.get("after"))
        with engine.connect() as conn:
            rows = browse.changed(conn, version.run_id, version.parent_id, label, after, PAGE)
        more = browse.page_after(rows, PAGE)
    return render(request, "changes.html", labelset=labelset, version=version,
                  summary=summary, label=label, photos=photos(engine, rows),
                  more=f"{more[0]!r}:{more[1]}" if more else None)


routes = [
    Route("/labelsets/{labelset}", labelset_page, name="labelset"),
    Route("/labelsets/{labelset}/thresholds", set_thresholds, methods=["POST"]),
    Route("/labelsets/{labelset}/learn", learn, methods=["POST"]),
    Route("/labelsets/{labelset}/changes", changes_page, name="changes"),
]
