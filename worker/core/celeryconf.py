"""The broker configuration producer and workers share: URL, transport options, queue, JSON."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from kombu import Queue

from worker.core.contract import RELABEL_TASK, TASK_NAME
from worker.core.settings import Settings


def tagging_queue(settings: Settings) -> str:
    """The queue of one model's chunks: TAGGER_QUEUE, the model readable, and its digest.

    Producer and workers both name it here, so a chunk can only reach workers of its own model.
    The digest tells apart models whose readable parts look alike; the name stays a valid file
    name for the embedded broker (no '/', bounded length).
    """
    readable = re.sub(r"[^0-9A-Za-z_-]+", "-", settings.model).strip("-")[-48:].lstrip("-")
    digest = hashlib.sha256(settings.model.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{settings.queue}.{readable or 'model'}.{digest}"


def transport_options(settings: Settings) -> dict[str, Any]:
    """A visibility timeout we chose, or the embedded folder broker's folders."""
    if settings.embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {"data_folder_in": str(folder / "queue"), "data_folder_out": str(folder / "queue"),
                "control_folder": str(folder / "control"),
                "processed_folder": str(folder / "processed")}
    # Redis re-delivers a reserved message only after this long: longer than the longest chunk
    # (bounded by task_time_limit) and than any retry countdown, short enough for quick recovery.
    # kombu sweeps for expired reservations every interval x throttle seconds (default 10 x 10):
    # sweep every few seconds instead, so recovery takes the visibility timeout, not +100 s.
    # A sweep holds a Redis lock that outlives a worker killed during it (kombu's default: 300 s,
    # every other worker's sweep skipped meanwhile); each message is restored in a WATCH
    # transaction, so a short lock only throttles sweeps and never restores one twice.
    sweep = max(1, min(30, settings.visibility_timeout // 5))
    return {"visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": sweep, "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 2 * sweep + 1}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings both sides need to talk about the same messages on the same queue."""
    queue = tagging_queue(settings)
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "task_default_queue": queue,
        "task_queues": [Queue(queue, routing_key=queue)],
        "task_routes": {name: {"queue": queue} for name in (TASK_NAME, RELABEL_TASK)},
    }
