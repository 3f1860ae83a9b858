"""The Celery task and worker signals: parse the message, delegate to pipeline, nothing more."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from worker import logs, metrics, pipeline, startup
from worker.app import app
from worker.errors import TransientError
from worker.settings import TASK_NAME, load_settings

log = logging.getLogger(__name__)
settings = load_settings()


@signals.setup_logging.connect
def _setup_logging(loglevel: str | int = "INFO", **_: Any) -> None:
    logs.configure(loglevel or "INFO")


@signals.celeryd_after_setup.connect
def _check_configuration(**_: Any) -> None:
    # In the parent, before any child forks. Celery logs and ignores handler exceptions,
    # so a bad configuration ends the worker explicitly.
    try:
        startup.check(settings)
    except Exception as exc:
        log.critical("refusing to start: %s", exc)
        raise SystemExit(1) from exc


@signals.worker_process_init.connect
def _load_model(**_: Any) -> None:
    startup.warm_up(settings)  # in each child, after fork: CUDA is first touched here


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=None)
def tag_chunk(self: Task, items: list[dict[str, str]], labelset_id: str,
              run_id: str | None = None, enqueued_at: float | None = None) -> dict[str, Any]:
    """Tag one chunk of images and write their results in one statement."""
    request = self.request
    with logs.bound(task_id=request.id, run_id=run_id, chunk_size=len(items)):
        if enqueued_at and not request.retries:
            metrics.observe_queue_wait(time.time() - enqueued_at)
        final = request.retries >= settings.chunk_retries
        tagger = pipeline.current_tagger(settings)
        try:
            report = pipeline.run_chunk(tagger, task_id=request.id, items=items,
                                        labelset_id=labelset_id, run_id=run_id,
                                        retries=request.retries, final=final)
        except SoftTimeLimitExceeded as exc:
            if not final:
                raise _retry(self, exc) from exc
            report = pipeline.fail_chunk(tagger, items, labelset_id=labelset_id, run_id=run_id,
                                         reason="timeout",
                                         message=f"chunk ran over {settings.task_time_limit}s")
        except TransientError as exc:
            raise _retry(self, exc) from exc
        except Exception as exc:
            # A bug must not lose the chunk: every item is recorded failed, then the task fails.
            log.exception("chunk crashed")
            pipeline.fail_chunk(tagger, items, labelset_id=labelset_id, run_id=run_id,
                                reason="internal-error", message=f"{type(exc).__name__}: {exc}")
            raise
        log.info("chunk tagged", extra=report.as_dict())
        return report.as_dict()


def _retry(task: Task, exc: Exception) -> Exception:
    countdown = get_exponential_backoff_interval(
        factor=2, retries=task.request.retries, maximum=settings.max_retry_countdown,
        full_jitter=True)
    log.warning("retrying chunk in %ss: %s", countdown, exc)
    return task.retry(exc=exc, countdown=countdown, throw=False)
