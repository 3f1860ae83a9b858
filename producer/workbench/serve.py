"""`producer serve`: the workbench on uvicorn, after the bind rule and the schema check."""

from __future__ import annotations

from producer.workbench.access import Access
from worker.core.settings import Settings
from worker.db import migrate


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until interrupted; a ConfigError (one line) if the address or database won't do."""
    access = Access.parse(settings.serve_token)
    access.check_bind(host)
    migrate.ensure_current(settings.database_url, settings.default_database)
    import uvicorn

    from producer.workbench.app import create_app

    uvicorn.run(create_app(settings, access, host), host=host, port=port, log_level="info",
                server_header=False, proxy_headers=False)
