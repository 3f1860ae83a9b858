"""A GPU-style worker (`-P threads -c 2`): chunks overlap across messages, and none is lost."""

from __future__ import annotations

import signal
from datetime import datetime

import pytest
import sqlalchemy as sa

from tests.kit.commands import send, wait_for_results
from tests.kit.faults import ImageServer, Reply
from tests.kit.images import image_bytes
from worker.db.schema import deliveries, engine_for

pytestmark = pytest.mark.timeout(240)


def delivery_windows(url: str) -> list[tuple[datetime, datetime | None]]:
    """(started, finished) of every chunk delivery, in start order."""
    with engine_for(url).connect() as conn:
        return [(r.updated_at, r.finished_at) for r in conn.execute(
            sa.select(deliveries).order_by(deliveries.c.updated_at))]


def serve(origin: ImageServer, prefix: str, count: int, delay: float) -> list[str]:
    for i in range(count):
        origin.routes[f"/{prefix}{i}.png"] = Reply(image_bytes(ord(prefix[0]) * 100 + i),
                                                   delay=delay)
    return [origin.url(f"/{prefix}{i}.png") for i in range(count)]


@pytest.mark.parametrize(("pool", "overlap"), [("threads", True), ("prefork", False)])
def test_the_next_chunk_is_fetched_while_this_one_runs(tagger_env, start_worker, pool,
                                                       overlap):
    env = {**tagger_env, "TAGGER_ALLOW_PRIVATE_URLS": "1"}
    with ImageServer() as origin:
        uris = serve(origin, "a", 4, delay=1.0) + serve(origin, "b", 4, delay=1.0)
        start_worker(env, pool=pool, concurrency=2 if pool == "threads" else 1)
        send(uris, chunk_size=4)
        wait_for_results(env["DATABASE_URL"], uris, 60)
    (_, first_end), (second_start, _) = delivery_windows(env["DATABASE_URL"])
    assert first_end is not None
    assert (second_start < first_end) is overlap


def test_a_killed_threads_worker_loses_no_chunk(tagger_env, start_worker):
    env = {**tagger_env, "TAGGER_ALLOW_PRIVATE_URLS": "1", "TAGGER_VISIBILITY_TIMEOUT": "30"}
    with ImageServer() as origin:
        uris = serve(origin, "k", 8, delay=1.5)
        worker = start_worker(env, pool="threads", concurrency=2)
        send(uris, chunk_size=4)
        assert origin.started.wait(30)
        worker.signal(signal.SIGKILL)  # both reserved chunks die with it, unacknowledged
        worker.proc.wait(10)
        start_worker(env, pool="threads", concurrency=2)
        found = wait_for_results(env["DATABASE_URL"], uris, 150)
    assert all(row.status == "done" for row in found.values())
