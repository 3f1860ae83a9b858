"""Search: a text query's images, an image's "more like this", and on an image's page its
near-duplicates and similar images, each with its cosine. All through the server's one Finder
(worker/search, producer/workbench/finding.py), in request threads: Starlette runs these
synchronous endpoints in its thread pool, never on the event loop.

A search is a ranking, not a table: its pages are the best ``page * PAGE`` hits cut to the last
``PAGE`` (the query's embedding is remembered, so a page costs one index search), and a search
shows its best PAGES pages; the galleries of runs keep their keyset pages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from producer.page import name
from producer.workbench.finding import NotReady
from producer.workbench.pages import IMAGE_KEY, PAGE, bench, checked, render
from producer.workbench.routes import images
from worker.core.contract import uri_hash
from worker.core.embedding import key_of
from worker.core.errors import ConfigError
from worker.db import browse
from worker.search import THRESHOLD, Hit

if TYPE_CHECKING:
    from worker.search import Finder

PAGES = 10  # a search shows its best PAGES * PAGE images
NEARBY = 12  # similar images shown on an image's page (after its near-duplicates)


def shown(hits: list[Hit]) -> list[dict[str, Any]]:
    """Hits as the gallery shows them: each links to its image's page."""
    return [{"uri": h.uri, "uri_hash": uri_hash(h.uri), "score": h.score,
             "top_label": h.top_label} for h in hits]


def _page(request: Request) -> int:
    raw = request.query_params.get("page") or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= PAGES:
        raise HTTPException(400, f"page is a number from 1 to {PAGES}: a search shows its "
                                 f"best {PAGES * PAGE} images")
    return int(raw)


def _one_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _gallery(request: Request, found: Any, **context: Any) -> Response:
    """A page of hits from ``found(finder, top)``, or a page that waits for the index."""
    page = _page(request)
    try:
        finder = bench(request).finding.finder()
    except NotReady as exc:
        return render(request, "search.html", waiting=str(exc), page=page, **context)
    try:
        hits = found(finder, page * PAGE)
    except ConfigError as exc:
        from worker.search.text import QueryError

        raise HTTPException(400 if isinstance(exc, QueryError) else 503,
                            _one_line(exc)) from None
    return render(request, "search.html", hits=shown(hits[(page - 1) * PAGE:]), page=page,
                  more=len(hits) == page * PAGE and page < PAGES, **context)


def search_page(request: Request) -> Response:
    from worker.search.text import QueryError, check_query  # NumPy: a server that searches

    query = request.query_params.get("q", "")
    try:
        check_query(query)  # an empty or overlong query is said before anything loads
    except QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    within = {k: v for k in ("run", "label") if (v := request.query_params.get(k, "").strip())}
    return _gallery(request, lambda finder, top: finder.text(query, top=top, **within),
                    query=query, path="/search", heading="Images for", subject=query,
                    link={"q": query, **within}, within=within)


def similar_page(request: Request) -> Response:
    key = checked(request.path_params["key"], IMAGE_KEY, "image")
    row = _kept_row(request, key)

    def found(finder: Finder, top: int) -> list[Hit]:
        if not _kept(finder, row["content_sha256"]):
            raise HTTPException(404, "this image has no kept embedding to search near")
        return finder.similar(row["uri"], top=top)

    return _gallery(request, found, query=None, uri=row["uri"], key=key,
                    path=f"/images/{key}/similar", heading="More like", subject=name(row["uri"]),
                    link={})


def _kept_row(request: Request, key: str) -> Any:
    """The image's newest tagged result (404 if it has none: nothing to search near)."""
    with bench(request).engine.connect() as conn:
        rows = browse.image(conn, key)
    row = next((r for r in rows if r["status"] == "done" and r["content_sha256"]), None)
    if row is None:
        raise HTTPException(404, "no tagged image with this key")
    return row


def _kept(finder: Finder, content: str) -> bool:
    """Whether the content has a kept embedding: only then is it searched near (Finder would
    otherwise run the image tower over the file itself, outside the pictures' guards)."""
    return len(finder.store.vectors([key_of(bytes.fromhex(content))])[0]) > 0


def nearby(request: Request, key: str, uri: str) -> dict[str, Any]:
    """The image page's panel: its near-duplicates (cosine >= THRESHOLD, identical copies at
    1) and the most similar of the rest, from one search of its nearest neighbours."""
    try:
        finder = bench(request).finding.finder()
        hits = finder.duplicates_of(uri, threshold=-1.0)  # never runs the image tower
    except (NotReady, ConfigError) as exc:
        return {"problem": _one_line(exc)}
    return {"duplicates": shown([h for h in hits if h.score >= THRESHOLD]),
            "similar": shown([h for h in hits if h.score < THRESHOLD][:NEARBY]),
            "threshold": THRESHOLD, "key": key}


images.PANELS.append(("_nearby.html", nearby))

routes = [
    Route("/search", search_page, name="search"),
    Route("/images/{key}/similar", similar_page, name="similar"),
]
