"""A run watched to its end: progress until every image is answered, and a run that fails or
is interrupted withdrawn (what `producer tag` and `relabel` on the embedded default share)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from producer.cancel import answered, withdraw
from producer.local_worker import LocalWorker
from producer.progress import Progress
from producer.status import wait
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.db import status as db_status
from worker.db.schema import engine_for

log = logging.getLogger(__name__)


def watch(settings: Settings, run_id: str, expected: int, worker: LocalWorker | None,
          timeout: float, doing: str = "tagging") -> None:
    """Progress until every image of the run is answered; Ctrl-C or a dead worker ends it.

    ``expected``: the images sent (an estimate for relabel's, a share for a run followed)."""
    def show(counts: Mapping[str, Any]) -> None:
        done = counts["done"] + counts["failed"]
        note = ("worker starting" if worker and not worker.ready() and not done
                else f"{counts['failed']} failed" if counts["failed"] else "")
        # The bar's end is what is answered plus what is still pending, once that is more.
        bar.update(done, max(expected, done + counts["pending"]), note)

    with Progress(doing, total=expected, watching=True) as bar:
        wait(settings, run_id, timeout, on_progress=show,
             stop=worker.failure if worker else None)


@contextlib.contextmanager
def withdrawn_if_stopped(settings: Settings, run_id: str,
                         echo: Callable[[str], None] | None = None,
                         stop_worker: Callable[[], None] | None = None) -> Iterator[None]:
    """A run that fails or is interrupted within the block is withdrawn (its unstarted chunks
    or ranges leave the queue; workers drop those they meet).

    ``stop_worker``: our own worker, stopped first, so that no chunk of the run is answered
    after the counts recorded and shown (``echo``) were taken.
    """
    try:
        yield
    except BaseException as exc:
        try:
            if stop_worker:
                stop_worker()
        finally:  # a second Ctrl-C while the worker stops still withdraws the run
            _withdraw(settings, run_id, exc, echo)
        raise


def _withdraw(settings: Settings, run_id: str, cause: BaseException,
              echo: Callable[[str], None] | None = None) -> None:
    """Nothing of ours will answer what is left: take it off the queue, and record what really
    happened (a run whose every image was answered stays complete)."""
    engine = engine_for(settings.database_url)
    try:
        counts = db_status.result_counts(engine, run_id)
        if not counts["pending"]:  # every image sent was answered: no chunk of it is left
            return
        interrupted = isinstance(cause, KeyboardInterrupt | SystemExit)
        why = "interrupted" if interrupted else redact(str(cause) or type(cause).__name__)[:300]
        withdraw(settings, run_id, counts, why)
        if echo and interrupted:  # an error says what to do in its own line
            echo(f"run {run_id}: {answered(counts)}; the same command tags the rest")
    except Exception as exc:  # the database or broker may be why we stopped: its error is shown
        log.warning("could not withdraw run %s (its unanswered images stay pending for "
                    "TAGGER_PENDING_TTL): %s", run_id, redact(str(exc)))
