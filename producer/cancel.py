"""`producer cancel RUN`: withdraw a run; what it does to queued, pending and running work."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kombu.exceptions

from producer import sending
from producer.status import find_run
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.db import runs as db
from worker.db import status as db_status
from worker.db.schema import engine_for


def withdraw(settings: Settings, run_id: str, counts: Mapping[str, Any], why: str) -> int:
    """Withdraw a run whose images ``counts`` (``result_counts``) describe: it is recorded
    cancelled with what happened, its pending marks and ranges go (a later run may send those
    images again), its messages no worker has started leave the queue (Redis and the embedded
    folder broker; how many is returned), and workers drop the ones they still meet."""
    db.cancel_run(engine_for(settings.database_url), run_id, f"{answered(counts)}: {why}")
    return sending.withdraw(settings, run_id)


def answered(counts: Mapping[str, Any]) -> str:
    """What became of a withdrawn run's images, in the words `producer runs` shows."""
    return (f"{counts['done'] + counts['failed']} images answered ({counts['done']} done, "
            f"{counts['failed']} failed), {counts['pending']} withdrawn")


def cancel(settings: Settings, run_id: str) -> str:
    """Cancel a run (ConfigError if there is none); what became of it, in one line.

    Chunks and ranges a worker is running when it happens still write what they computed (a
    relabel range stops after its current batch of 5,000 images); nothing else of the run is
    tagged. A run already over is left as it is."""
    run = find_run(settings, run_id)
    assert run is not None  # find_run raises for an unknown id
    if run["cancelled_at"]:
        return f"run {run_id} was already cancelled: {run['error'] or 'nothing left to do'}"
    if run["state"] == "complete" or (run["finished_at"] and not run["pending"]):
        return (f"run {run_id} is over ({run['done']} done, {run['failed']} failed): nothing "
                "to cancel")
    counts = db_status.result_counts(engine_for(settings.database_url), run_id)
    try:
        messages = withdraw(settings, run_id, counts, "cancelled by `producer cancel`")
        taken = f"{messages} messages taken off the queue"
    except kombu.exceptions.OperationalError as exc:  # recorded: workers drop its messages
        taken = (f"the broker is unreachable ({redact(str(exc))}): its queued messages stay "
                 "until workers take and drop them")
    return (f"run {run_id} cancelled: {counts['done'] + counts['failed']} images answered, "
            f"{counts['pending']} no longer pending; {taken}; chunks already running finish "
            "and keep their results")
