"""An image: its picture larger, its labels and scores per label set and model, what reviewers
said, and the forms to accept, reject or pick a label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from producer.judged import Context
from producer.workbench.pages import (
    IMAGE_KEY,
    bench,
    checked,
    field_text,
    form,
    href,
    render,
    reviewer,
)
from worker.core.judgement import VERDICTS
from worker.core.labels import LabelSet
from worker.db import browse, corrections, learned
from worker.db import report as figures
from worker.db.labelsets import load_labelset

# Panels other page families add under the picture, in this order: a template, and what it
# shows of the image (from the request, the image's key and URI; made in the request's thread).
PANELS: list[tuple[str, Callable[[Request, str, str], dict[str, Any]]]] = []


def _rows(request: Request) -> tuple[str, list[Any]]:
    key = checked(request.path_params["key"], IMAGE_KEY, "image")
    with bench(request).engine.connect() as conn:
        rows = browse.image(conn, key)
    if not rows:
        raise HTTPException(404, "no such image")
    return key, rows


def image_page(request: Request) -> Response:
    key, rows = _rows(request)
    engine = bench(request).engine
    context = Context(engine)
    with engine.connect() as conn:
        verdicts = context.verdicts(conn, rows)
    labelsets: dict[str, LabelSet | None] = {}
    shown = []
    for row in rows:
        if row["labelset_id"] not in labelsets:
            labelsets[row["labelset_id"]] = load_labelset(engine, row["labelset_id"])
        found = verdicts.get((row["labelset_id"], row["content_sha256"]))
        shown.append({"row": row, "labelset": labelsets[row["labelset_id"]], "verdicts": found,
                      "judged": context.judged(row, found) if row["status"] == "done" else None,
                      "thresholds": context.limits.get(row["labelset_id"], {})})
    uri = rows[0]["uri"]
    return render(request, "image.html", key=key, uri=uri, results=shown,
                  panels=[(template, made(request, key, uri)) for template, made in PANELS])


def picture(request: Request) -> Response:
    key, rows = _rows(request)
    size = request.query_params.get("size", "small")
    if size not in {"small", "large"}:
        raise HTTPException(400, "size is small or large")
    row = rows[0]
    if row["signed"]:
        raise HTTPException(404, "this image's URL was signed: the signature is not stored")
    content = row["content_sha256"] or key
    tag = f'"{content}-{size}"'
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers={"etag": tag})
    with bench(request).engine.connect() as conn:
        roots = figures.file_roots(conn, [key])
    made = bench(request).pictures.get(row["uri"], content, roots, size)
    if made.jpeg is None:
        status = 403 if made.reason == "outside-roots" else 404
        return Response(made.problem + "\n", status, media_type="text/plain")
    return Response(made.jpeg, media_type="image/jpeg",
                    headers={"etag": tag, "cache-control": "private, max-age=3600"})


async def verdict(request: Request) -> Response:
    """Store a reviewer's verdict on one label of this image, then show the image again."""
    data = await form(request)
    key, rows = await run_in_threadpool(_rows, request)
    labelset_id, label = field_text(data, "labelset"), field_text(data, "label")
    said = field_text(data, "verdict")
    row = next((r for r in rows if r["labelset_id"] == labelset_id and r["status"] == "done"
                and r["content_sha256"]), None)
    if row is None or said not in VERDICTS:
        raise HTTPException(400, "no tagged result of this image under that label set, or a "
                                 "verdict other than right or wrong")
    engine = bench(request).engine
    labelset = await run_in_threadpool(load_labelset, engine, labelset_id)
    if labelset is None or label not in labelset.labels:
        raise HTTPException(400, "that label is not in the label set")
    root = await run_in_threadpool(learned.root_of, engine, labelset_id)
    await run_in_threadpool(corrections.add, engine, root, reviewer(request), [
        corrections.Correction(row["content_sha256"], row["uri"], label, said)])
    return RedirectResponse(href(f"/images/{key}") + f"#ls-{labelset_id}", 303)


routes = [
    Route("/images/{key}", image_page, name="image"),
    Route("/images/{key}/picture", picture, name="picture"),
    Route("/images/{key}/verdicts", verdict, methods=["POST"], name="verdict"),
]
