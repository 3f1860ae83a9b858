"""The worker's Celery app: the shared broker settings plus delivery guarantees, nothing else."""

from __future__ import annotations

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

from worker.core.celeryconf import celery_config
from worker.core.settings import Settings, load_settings
from worker.service.flower import guard_flower


def use_safe_transport() -> None:
    """Malformed entries are parked instead of ending the worker (worker/service/broker_guards.py).

    Registered under the redis:// schemes rather than set as ``broker_transport``: the broker
    URL then stays redis://, which Flower needs to read queue depths.
    """
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = "worker.service.broker_guards:Transport"


def create_app(settings: Settings) -> Celery:
    use_safe_transport()
    app = Celery("worker", include=["worker.service.tasks"])
    app.conf.update(celery_config(settings))
    app.conf.update(
        broker_connection_max_retries=None,
        visibility_timeout=settings.visibility_timeout,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.task_time_limit - 5,
        worker_prefetch_multiplier=1,
        worker_proc_alive_timeout=900,  # the child loads the model (and may export it) first
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


guard_flower()
app = create_app(load_settings())
