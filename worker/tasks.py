"""The Celery task and worker signals: decode the message, delegate to chunks, nothing more."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from celery import Task, bootsteps, signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request

from worker import broker_guards, chunks, logs, metrics, relabel, startup
from worker.app import app
from worker.core.contract import RELABEL_TASK, TASK_NAME, Chunk, Span
from worker.core.errors import MessageError, Reason, TransientError
from worker.core.redact import redact
from worker.core.settings import load_settings

log = logging.getLogger(__name__)
settings = load_settings()
broker_guards.cap_decompression()


@signals.setup_logging.connect
def _setup_logging(loglevel: str | int = "INFO", logfile: str | None = None, **_: Any) -> None:
    logs.configure(loglevel or "INFO", logfile or None)


@signals.celeryd_after_setup.connect
def _start(instance: Any, **_: Any) -> None:
    """In the parent, before any child forks: refuse a bad configuration, keep only our task."""
    for name in [n for n in app.tasks if n not in {TASK_NAME, RELABEL_TASK}]:
        app.tasks.unregister(name)  # built-ins such as celery.accumulate must not run on demand
    try:
        startup.check(settings)
        startup.stop_when_a_child_fails()
        if _forks(instance):
            startup.preload()
        else:  # threads/solo: the model lives in this very process
            startup.warm_up(settings)
    except Exception as exc:
        # Celery logs and ignores handler exceptions: a bad configuration ends the worker here.
        log.critical("refusing to start: %s", exc)
        raise SystemExit(1) from exc


def _forks(instance: Any) -> bool:
    return "prefork" in str(getattr(instance, "pool_cls", "prefork")).lower()


@signals.worker_process_init.connect
def _warm_up(**_: Any) -> None:
    # In each prefork child, after fork: CUDA is first touched here.
    if startup.stopping:  # a sibling already failed: the pool is being shut down
        raise SystemExit(1)
    try:
        startup.warm_up(settings)
    except Exception as exc:
        log.critical("refusing to start: cannot load TAGGER_MODEL=%s: %s", settings.model, exc,
                     exc_info=True)
        startup.stop_parent()
        raise SystemExit(1) from exc  # not Exception: Celery would log it and carry on


@signals.worker_process_shutdown.connect
def _close(**_: Any) -> None:
    # In each prefork child, before billiard's os._exit: stop the decoder processes.
    startup.close()


class VisibilityLease(bootsteps.StartStopStep):
    """Keeps this Redis database's visibility-timeout claim alive while the worker runs."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer: Any) -> None:
        if not settings.embedded_broker:
            consumer.timer.call_repeatedly(broker_guards.LEASE_REFRESH, broker_guards.refresh_lease,
                                           (settings,), priority=10)


app.steps["consumer"].add(VisibilityLease)


class QuietRequest(Request):  # type: ignore[misc]
    """Celery's request, except that it never shows the message's arguments (URIs).

    Celery logs, sends in events and answers `inspect` with the sender's argsrepr and
    kwargsrepr, or the arguments themselves when they are empty; another producer or a
    hand-made message may carry every URI there. Whatever the sender wrote, this says only
    how many images the message holds.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        items = self._kwargs.get("items") if isinstance(self._kwargs, dict) else None
        shown = f"<{len(items)} images>" if isinstance(items, list) else "<not shown>"
        self._argsrepr, self._kwargsrepr = "()", shown
        self._request_dict.update(argsrepr="()", kwargsrepr=shown)

    def info(self, safe: bool = False) -> dict[str, Any]:
        return super().info(safe=True)


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=settings.chunk_retries, Request=QuietRequest)
def tag_chunk(self: Task, **message: Any) -> dict[str, Any]:
    """Tag one chunk of images and write their results in one transaction."""
    request = self.request
    try:
        chunk = Chunk.decode(message)
    except MessageError as exc:
        log.error("dropped a malformed chunk message %s: %s", request.id, exc)
        return {"dropped": str(exc)}
    with logs.bound(task_id=request.id, run_id=chunk.run_id, chunk_size=len(chunk.items)):
        if not request.retries:
            metrics.observe_queue_wait(time.time() - chunk.enqueued_at)
        report = _run(self, chunk)
        log.info("chunk tagged", extra=report.as_dict())
        return report.as_dict()


def _run(task: Task, chunk: Chunk) -> chunks.ChunkReport:
    retries = task.request.retries
    final = retries >= settings.chunk_retries
    parts = startup.parts(settings)
    try:
        return chunks.run_chunk(parts, chunk, task_id=task.request.id, retries=retries,
                                final=final)
    except (SoftTimeLimitExceeded, TransientError) as exc:
        if not final:
            raise _retry(task, exc, chunk) from exc
        reason = Reason.TIMEOUT if isinstance(exc, SoftTimeLimitExceeded) else Reason.TRANSIENT
        log.error("giving up on the chunk after %d retries: %s", retries, exc)
        return chunks.park(parts, chunk, reason, task_id=task.request.id, attempts=retries + 1,
                           message=f"gave up after {retries} retries: {exc or 'time limit'}; "
                                   f"send again with `producer retry-failed --reason {reason}`")
    except Exception as exc:
        # A bug must not lose the chunk nor loop on it: its items are recorded failed.
        log.exception("chunk crashed")
        return chunks.park(parts, chunk, Reason.INTERNAL_ERROR, task_id=task.request.id,
                           message=f"{type(exc).__name__}: {exc}")


@app.task(name=RELABEL_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=settings.chunk_retries)
def relabel_range(self: Task, **message: Any) -> dict[str, Any]:
    """Score one range of kept embeddings with a label set and write the results."""
    try:
        span = Span.decode(message)
    except MessageError as exc:
        log.error("dropped a malformed relabel message %s: %s", self.request.id, exc)
        return {"dropped": str(exc)}
    with logs.bound(task_id=self.request.id, run_id=span.run_id):
        parts, retries = startup.parts(settings), self.request.retries
        try:
            report = relabel.relabel(parts, span, self.request.id)
        except (SoftTimeLimitExceeded, TransientError) as exc:
            if retries < settings.chunk_retries:
                raise _retry(self, exc, span) from exc
            report = relabel.give_up(parts, span, self.request.id,
                                     f"gave up after {retries} retries: {exc or 'time limit'}")
        except Exception as exc:  # a bug: the range is given up, not looped on
            log.exception("relabel range crashed")
            report = relabel.give_up(parts, span, self.request.id, f"{type(exc).__name__}: {exc}")
        log.info("range relabelled", extra=report)
        return report


def _retry(task: Task, exc: Exception, chunk: Chunk | Span) -> Exception:
    countdown = get_exponential_backoff_interval(
        factor=2, retries=task.request.retries, maximum=settings.max_retry_countdown,
        full_jitter=True)
    if isinstance(exc, chunks.RetryItems):  # only the images that met the trouble go again
        chunk = dataclasses.replace(chunk, items=exc.items)
    log.warning("retrying chunk in %ss (%d of %d): %s", countdown, task.request.retries + 1,
                settings.chunk_retries, exc)
    # The exception travels in the task-retried event (Flower): without the secrets of a URL.
    return task.retry(exc=TransientError(redact(str(exc))), countdown=countdown, throw=False,
                      kwargs=chunk.encode(), kwargsrepr=chunk.describe())
