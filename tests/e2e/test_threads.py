"""A GPU-style worker (`-P threads -c 2`): chunks overlap across messages, and none is lost."""

from __future__ import annotations

import signal
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from testkit.commands import send, wait_for_results
from testkit.faults import ImageServer, Reply
from testkit.images import image_bytes
from testkit.services import RedisServer
from worker.db.schema import deliveries, engine_for

pytestmark = pytest.mark.timeout(240)


def delivery_windows(url: str) -> list[tuple[datetime, datetime | None]]:
    """(started, finished) of every chunk delivery, in start order."""
    with engine_for(url).connect() as conn:
        return [(r.updated_at, r.finished_at) for r in conn.execute(
            sa.select(deliveries).order_by(deliveries.c.updated_at))]


def serve(origin: ImageServer, prefix: str, count: int, delay: float) -> list[str]:
    for i in range(count):
        origin.routes[f"/{prefix}{i}.png"] = Reply(image_bytes(ord(prefix) * 100 + i),
                                                   delay=delay)
    return [origin.url(f"/{prefix}{i}.png") for i in range(count)]


def test_chunks_overlap_across_messages_and_a_killed_worker_loses_none(
        tagger_env, start_worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with RedisServer(tmp_path / "redis", appendonly=False) as redis, ImageServer() as origin:
        # Our own Redis: a short visibility timeout, so the dead worker's chunks come back soon.
        env = {**tagger_env, "CELERY_BROKER_URL": redis.url, "TAGGER_VISIBILITY_TIMEOUT": "10",
               "TAGGER_ALLOW_PRIVATE_URLS": "1"}
        monkeypatch.setenv("CELERY_BROKER_URL", redis.url)
        first = serve(origin, "a", 4, delay=1.0) + serve(origin, "b", 4, delay=1.0)
        worker = start_worker(env, pool="threads", concurrency=2)
        send(first, chunk_size=4)
        wait_for_results(env["DATABASE_URL"], first, 60)
        (_, first_end), (second_start, _) = delivery_windows(env["DATABASE_URL"])
        assert first_end is not None and second_start < first_end  # fetched while one ran

        later = serve(origin, "k", 8, delay=1.5)
        origin.started.clear()
        send(later, chunk_size=4)
        assert origin.started.wait(30)
        worker.signal(signal.SIGKILL)  # both reserved chunks die with it, unacknowledged
        worker.proc.wait(10)
        start_worker(env, pool="threads", concurrency=2)
        found = wait_for_results(env["DATABASE_URL"], first + later, 90)
    assert all(row.status == "done" for row in found.values())
