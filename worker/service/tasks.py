"""The Celery task and worker signals: decode the message, delegate to chunks, nothing more."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery import Task, bootsteps, signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request

from worker.core.contract import RELABEL_TASK, TASK_NAME, Chunk, Span
from worker.core.errors import MessageError, Reason, TransientError
from worker.core.redact import redact
from worker.core.settings import load_settings
from worker.handlers import chunks, relabel
from worker.service import broker_guards, logs, owner, startup, visibility
from worker.service.app import app

log = logging.getLogger(__name__)
settings = load_settings()
broker_guards.cap_decompression()


@signals.setup_logging.connect
def _setup_logging(loglevel: str | int = "INFO", logfile: str | None = None, **_: Any) -> None:
    logs.configure(logs.worker_level(loglevel or "INFO"), logfile or None)


@signals.celeryd_after_setup.connect
def _start(instance: Any, **_: Any) -> None:
    """In the parent, before any child forks: refuse a bad configuration, keep only our task."""
    owner.stop_with(settings.owner_pid)
    for name in [n for n in app.tasks if n not in {TASK_NAME, RELABEL_TASK}]:
        app.tasks.unregister(name)  # built-ins such as celery.accumulate must not run on demand
    try:
        forks = _forks(instance)
        startup.check(settings, instance.concurrency if forks else 1)
        startup.check_queues(instance.app.amqp.queues.consume_from or instance.app.amqp.queues,
                             settings)
        startup.stop_when_a_child_fails()
        if forks:
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


class VisibilityClaim(bootsteps.StartStopStep):
    """Refreshes this worker's visibility-timeout claim while it runs; deletes it at the end."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer: Any) -> None:
        if not settings.embedded_broker:
            self.tref = consumer.timer.call_repeatedly(visibility.HEARTBEAT, visibility.heartbeat,
                                                       priority=10)

    def stop(self, consumer: Any) -> None:
        if getattr(self, "tref", None) is not None:
            self.tref.cancel()

    def shutdown(self, consumer: Any) -> None:
        self.stop(consumer)
        visibility.release()


app.steps["consumer"].add(VisibilityClaim)


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


# max_retries=None: Celery would count retries from the message's own header, which any sender
# can write; the workers' records in the database bound them instead (chunks.retry_or_park).
@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
          Request=QuietRequest)
def tag_chunk(self: Task, **message: Any) -> dict[str, Any]:
    """Tag one chunk of images and write their results in one transaction."""
    request = self.request
    try:
        chunk = Chunk.decode(message)
    except MessageError as exc:
        log.error("dropped a malformed chunk message %s: %s", request.id, exc)
        return {"dropped": str(exc)}
    with logs.bound(task_id=request.id, run_id=chunk.run_id, chunk_size=len(chunk.items)):
        report = _run(self, chunk)
        log.info("chunk tagged", extra=report.as_dict())
        return report.as_dict()


def _run(task: Task, chunk: Chunk) -> chunks.ChunkReport:
    task_id = task.request.id
    parts = startup.parts(settings)
    try:
        return chunks.run_chunk(parts, chunk, task_id=task_id,
                                chunk_retries=settings.chunk_retries)
    except (SoftTimeLimitExceeded, TransientError) as exc:
        reason = Reason.TIMEOUT if isinstance(exc, SoftTimeLimitExceeded) else Reason.TRANSIENT
        outcome = chunks.retry_or_park(parts, chunk, exc, reason, task_id=task_id,
                                       chunk_retries=settings.chunk_retries,
                                       header_retries=_int(task.request.retries))
        if isinstance(outcome, chunks.ChunkReport):
            return outcome
        raise _retry(task, exc, chunk, outcome) from exc
    except Exception as exc:
        # A bug must not lose the chunk nor loop on it: its items are recorded failed.
        log.exception("chunk crashed")
        return chunks.park(parts, chunk, Reason.INTERNAL_ERROR, task_id=task_id,
                           message=f"{type(exc).__name__}: {exc}")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@app.task(name=RELABEL_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=None)
def relabel_range(self: Task, **message: Any) -> dict[str, Any]:
    """Score one range of kept embeddings with a label set and write the results."""
    try:
        span = Span.decode(message)
    except MessageError as exc:
        log.error("dropped a malformed relabel message %s: %s", self.request.id, exc)
        return {"dropped": str(exc)}
    with logs.bound(task_id=self.request.id, run_id=span.run_id):
        parts = startup.parts(settings)
        try:
            report = relabel.relabel(parts, span, self.request.id)
        except (SoftTimeLimitExceeded, TransientError) as exc:
            number = chunks.grant_retry(parts, self.request.id, settings.chunk_retries,
                                        _int(self.request.retries))
            if number is not None:
                raise _retry(self, exc, span, number) from exc
            report = relabel.give_up(parts, span, self.request.id, f"gave up after "
                                     f"{settings.chunk_retries} retries: {exc or 'time limit'}")
        except Exception as exc:  # a bug: the range is given up, not looped on
            log.exception("relabel range crashed")
            report = relabel.give_up(parts, span, self.request.id, f"{type(exc).__name__}: {exc}")
        log.info("range relabelled", extra=report)
        return report


def _retry(task: Task, exc: Exception, chunk: Chunk | Span, number: int) -> Exception:
    countdown = get_exponential_backoff_interval(
        factor=2, retries=number - 1, maximum=settings.max_retry_countdown, full_jitter=True)
    if isinstance(exc, chunks.RetryItems):  # only the images that met the trouble go again
        chunk = dataclasses.replace(chunk, items=exc.items)
    log.warning("retrying chunk in %ss (%d of %d): %s", countdown, number,
                settings.chunk_retries, exc)
    task.request.retries = number - 1  # the header of the message sent again says ours
    # The exception travels in the task-retried event (Flower): without the secrets of a URL.
    return task.retry(exc=TransientError(redact(str(exc))), countdown=countdown, throw=False,
                      kwargs=chunk.encode(), kwargsrepr=chunk.describe())
