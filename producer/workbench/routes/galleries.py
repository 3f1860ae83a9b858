"""A run's gallery of one label, least confident first, a keyset page at a time, with what
reviewers said of each image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from producer.judged import Context
from producer.workbench.pages import PAGE, after_score, bench, render
from producer.workbench.routes.runs import recorded
from worker.db import browse


def photos(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Gallery rows with their judged label (a reviewer's wins; unsure under a threshold)."""
    context = Context(engine)
    with engine.connect() as conn:
        verdicts = context.verdicts(conn, [{**row, "status": "done"} for row in rows])
    return [{**row, "judged": context.judged(row, verdicts.get((row["labelset_id"],
                                                                 row["content_sha256"])))}
            for row in rows]


def gallery_page(request: Request) -> Response:
    run = recorded(request)
    label = request.query_params.get("label")
    if not label:
        raise HTTPException(400, "which label? (?label=...)")
    after = after_score(request.query_params.get("after"))
    engine = bench(request).engine
    with engine.connect() as conn:
        rows = browse.gallery(conn, run["id"], label, after, PAGE)
    more = browse.page_after(rows, PAGE)
    return render(request, "gallery.html", run=run, label=label, photos=photos(engine, rows),
                  more=f"{more[0]!r}:{more[1]}" if more else None, first=after is None)


routes = [Route("/runs/{run}/gallery", gallery_page, name="gallery")]
