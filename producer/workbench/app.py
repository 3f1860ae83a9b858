"""The workbench as an ASGI application: the route modules' pages, static files, and the
guard (reviewer, security headers) and host check around them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from producer.workbench.access import Access, guard
from producer.workbench.finding import Finding
from producer.workbench.pages import HERE, Bench, error_page
from producer.workbench.pictures import Pictures
from producer.workbench.routes import galleries, images, labelsets, runs, search
from worker.core.settings import Settings
from worker.db.schema import engine_for

# One module per page family, each with its `routes`; a new page family is one more module.
ROUTES = (runs, galleries, images, labelsets, search)


def create_app(settings: Settings, access: Access, host: str = "127.0.0.1") -> Any:
    """The application over ``settings``' results database, for reviewers ``access`` admits."""
    bench = Bench(settings, engine_for(settings.database_url), access, Pictures(settings),
                  Finding(settings))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        bench.finding.start()  # the search index loads while the first pages are served
        try:
            yield
        finally:
            bench.pictures.close()
            bench.finding.close()
            bench.counted.close()

    app = Starlette(
        routes=[*(route for module in ROUTES for route in module.routes),
                Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")],
        middleware=[Middleware(TrustedHostMiddleware,
                               allowed_hosts=access.allowed_hosts(host))],
        exception_handlers={HTTPException: error_page, Exception: error_page},
        lifespan=lifespan)
    app.state.bench = bench
    return guard(app, access)
