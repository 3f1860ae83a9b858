"""The Celery app and its delivery settings (at-least-once, JSON only), nothing else."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from worker.settings import Settings, load_settings


def broker_options(settings: Settings) -> dict:
    """Transport options: a visibility timeout we chose, or the embedded folder broker."""
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
    return {"visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": max(1, min(30, settings.visibility_timeout // 5)),
            "unacked_restore_throttle": 1}


def create_app(settings: Settings) -> Celery:
    app = Celery("worker", include=["worker.tasks"])
    options = broker_options(settings)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=options,
        visibility_timeout=settings.visibility_timeout,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.task_time_limit - 5,
        worker_prefetch_multiplier=1,
        worker_proc_alive_timeout=300,  # the child loads the model before taking work
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue=settings.queue,
        task_queues=[Queue(settings.queue, routing_key=settings.queue)],
        task_routes={"tagger.*": {"queue": settings.queue}},
    )
    return app


app = create_app(load_settings())
