"""catalog-tagger's GPU worker: ``celery -A worker worker`` finds the Celery app here."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so that importing worker.store or worker.settings builds no Celery app.
    if name in {"app", "celery"}:
        from worker.app import app

        return app
    raise AttributeError(name)
