"""catalog-tagger's worker side: ``celery -A worker worker`` finds the Celery app here."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so that importing worker.core or worker.db builds no Celery app.
    if name in {"app", "celery"}:
        from worker.core.errors import ConfigError

        try:
            from worker.service.app import app
        except ConfigError as exc:  # a user's mistake: one line, not a traceback
            raise SystemExit(f"catalog-tagger: {exc}") from None
        return app
    raise AttributeError(name)
