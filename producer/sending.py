"""The producer's side of the broker: send chunk messages, read queue depth, withdraw a run."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from celery import Celery

from worker.core.celeryconf import celery_config, tagging_queue
from worker.core.contract import RELABEL_TASK, TASK_NAME, Chunk, Span
from worker.core.settings import Settings

RUN_HEADER = "tagger_run"  # which run a message belongs to, readable without unpacking it
PAGE = 500  # queue entries read per Redis round trip while withdrawing


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
    sending_app(settings).send_task(name, kwargs=message.encode(), queue=tagging_queue(settings),
                                    compression="zlib", kwargsrepr=message.describe(),
                                    headers={RUN_HEADER: message.run_id})


def queue_depths(settings: Settings, queues: Sequence[str]) -> dict[str, dict[str, int]]:
    """Of each queue: chunks waiting in it, and (on Redis) delivered but not yet acknowledged."""
    with sending_app(settings).connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)
        channel = conn.default_channel
        held = _reserved(channel) if conn.transport.driver_type == "redis" else Counter()
        return {queue: {"waiting": int(channel.queue_declare(queue=queue,
                                                             passive=False).message_count),
                        "reserved": held[queue]} for queue in queues}


def _reserved(channel: Any) -> Counter[str]:
    """Kombu's "unacked" hash by queue: prefetched, running and retry-countdown chunks.

    Flower and KEDA's Redis scaler count LLEN only; these left the list when a worker took them.
    The hash is shared by every queue of the Redis database: each entry says its routing key.
    """
    held: Counter[str] = Counter()
    for _tag, raw in channel.client.hscan_iter(channel.unacked_key, count=PAGE):
        with contextlib.suppress(ValueError, TypeError, IndexError):
            held[str(json.loads(raw)[2])] += 1
    return held



def withdraw(settings: Settings, run_id: str) -> int:
    """Take a run's chunks that no worker has started off the queue; how many were taken.

    Redis and the embedded folder broker allow it; a chunk a worker took meanwhile is left to
    the worker, which drops chunks of a cancelled run (worker/handlers/chunks.py).
    """
    queue = tagging_queue(settings)
    with sending_app(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=5)
        channel = conn.default_channel
        if conn.transport.driver_type == "redis":
            return _withdraw_redis(channel, queue, run_id)
        if conn.transport.driver_type == "filesystem":
            return _withdraw_files(Path(channel.data_folder_in), queue, run_id)
    return 0


def _of_run(raw: bytes | str, run_id: str) -> bool:
    with contextlib.suppress(ValueError, AttributeError):
        return bool(json.loads(raw).get("headers", {}).get(RUN_HEADER) == run_id)
    return False


def _withdraw_redis(channel: Any, queue: str, run_id: str) -> int:
    client, taken = channel.client, 0
    for key in {channel._q_for_pri(queue, pri) for pri in channel.priority_steps}:
        ours = [raw for raw in _entries(client, key) if _of_run(raw, run_id)]
        # LREM of the exact entry: one a worker popped meanwhile is simply not there any more.
        taken += sum(int(client.lrem(key, 1, raw)) for raw in ours)
    return taken


def _entries(client: Any, key: str) -> Iterator[bytes]:
    start = 0
    while page := client.lrange(key, start, start + PAGE - 1):
        yield from page
        start += PAGE


def _withdraw_files(folder: Path, queue: str, run_id: str) -> int:
    taken = 0
    for path in sorted(folder.glob(f"*.{queue}.msg")):
        if path.name.partition(".")[2] != f"{queue}.msg":
            continue  # another queue whose name ends like ours
        with contextlib.suppress(FileNotFoundError):  # a worker moved it away: it is the worker's
            if _of_run(path.read_bytes(), run_id):
                os.remove(path)
                taken += 1
    return taken
