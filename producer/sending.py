"""The producer's side of the broker: send chunk messages by task name, read queue depth."""

from __future__ import annotations

import functools

from celery import Celery

from worker.core.celeryconf import celery_config
from worker.core.contract import RELABEL_TASK, TASK_NAME, Chunk, Span
from worker.core.settings import Settings


@functools.cache
def sending_app(settings: Settings) -> Celery:
    """A Celery app that only sends: the worker's task code is never imported here."""
    app = Celery("producer", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def check_broker(settings: Settings) -> None:
    """Fail fast, with kombu's own error, when the broker cannot be reached."""
    with sending_app(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)


def send(settings: Settings, message: Chunk | Span) -> None:
    """A chunk to tag, or a range of kept embeddings to relabel."""
    # zlib shrinks a queued chunk about 5x in Redis (URLs repeat their prefixes); the short
    # kwargsrepr replaces a 1 KB repr header that Flower would show truncated anyway.
    name = TASK_NAME if isinstance(message, Chunk) else RELABEL_TASK
    sending_app(settings).send_task(name, kwargs=message.encode(), queue=settings.queue,
                                    compression="zlib", kwargsrepr=message.describe())


def queue_depth(settings: Settings) -> dict[str, int]:
    """Messages waiting in the queue, and (on Redis) delivered but not yet acknowledged."""
    with sending_app(settings).connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)
        channel = conn.default_channel
        waiting = channel.queue_declare(queue=settings.queue, passive=False).message_count
        reserved = 0
        if conn.transport.driver_type == "redis":
            # Flower counts LLEN only; chunks being worked on sit in kombu's "unacked" hash.
            reserved = int(channel.client.hlen(channel.unacked_key))
        return {"waiting": int(waiting), "reserved": reserved}
