"""What every page of the workbench shares: its state, templates (autoescaped), links with
query strings, keyset-page parameters, checked forms and the error page."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.engine import Engine
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from producer.page import name, place
from producer.workbench.access import Access
from producer.workbench.counted import Counted
from producer.workbench.finding import Finding
from producer.workbench.jobs import Jobs
from producer.workbench.pictures import Pictures
from worker.core.redact import redact
from worker.core.settings import Settings

log = logging.getLogger(__name__)
HERE = resources.files("producer.workbench")
PAGE = 48  # images per gallery page
RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,32}")
LABELSET_ID = re.compile(r"[0-9a-f]{16}")
IMAGE_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass
class Bench:
    """The application's state: one per server."""

    settings: Settings
    engine: Engine
    access: Access
    pictures: Pictures
    finding: Finding
    jobs: Jobs = field(default_factory=Jobs)
    counted: Counted = field(default_factory=Counted)


def when(moment: datetime | str | None) -> str:
    if moment is None:
        return "-"
    moment = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    moment = moment.astimezone(UTC) if moment.tzinfo else moment
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def href(path: str, **query: Any) -> str:
    """A link to one of our pages; query values (labels: any text) percent-encoded."""
    shown = {k: v for k, v in query.items() if v is not None and v != ""}
    return path + ("?" + urlencode(shown) if shown else "")


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.autoescape = True  # every template, whatever its name
    env.trim_blocks = env.lstrip_blocks = True
    env.filters.update(name=name, place=place, redact=redact, when=when,
                       epoch=lambda t: when(datetime.fromtimestamp(t, UTC)),
                       pct=lambda v: "-" if v is None else f"{100 * v:.1f}%")
    env.globals.update(href=href)
    return templates


TEMPLATES = _templates()


def bench(request: Request) -> Bench:
    return request.app.state.bench  # type: ignore[no-any-return]


def reviewer(request: Request) -> str:
    return str(request.scope["state"]["reviewer"])


def render(request: Request, template: str, code: int = 200, **context: Any) -> Response:
    who = reviewer(request)
    return TEMPLATES.TemplateResponse(request, template, {
        "reviewer": who, "csrf": bench(request).access.csrf(who), **context},
        status_code=code)


def checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    """A path part as our pages write it, or 404: nothing else reaches a query."""
    if not pattern.fullmatch(value):
        raise HTTPException(404, f"no such {what}")
    return value


def after_score(raw: str | None) -> tuple[float, int] | None:
    """A keyset position ``score:id`` from a query string; None for the first page."""
    if not raw:
        return None
    score, _, key = raw.partition(":")
    try:
        return float(score), int(key)
    except ValueError:
        raise HTTPException(400, "after must be score:id") from None


def after_id(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        raise HTTPException(400, "after must be an id") from None


async def form(request: Request) -> FormData:
    """A POSTed form whose CSRF token is the reviewer's; 403 otherwise."""
    data = await request.form(max_files=0, max_fields=50)
    token = data.get("csrf")
    if not isinstance(token, str) or not bench(request).access.csrf_ok(reviewer(request), token):
        raise HTTPException(403, "this form's CSRF token is missing or stale: reload the page "
                                 "and send it again")
    return data


def field_text(data: FormData, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise HTTPException(400, f"the form needs {key}")
    return value.strip()


async def error_page(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    if status == 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    if "reviewer" not in request.scope.get("state", {}):
        return Response(f"{detail}\n", status, media_type="text/plain")
    return render(request, "error.html", status, status=status, detail=detail)
