"""The backlog KEDA scales on: `producer serve-metrics` over HTTP against a real worker that
holds prefetched chunks, compared with `producer status` and with the Redis list alone."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from testkit.commands import PRODUCER, count, producer
from testkit.faults import ImageServer, Reply
from testkit.images import image_bytes
from testkit.processes import Command
from testkit.services import RedisServer, free_port, wait_until
from worker.db.schema import engine_for

IMAGES = 6
PREFETCH = 3  # one chunk running, two prefetched: kombu's unacked hash holds all three


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def answers(port: int) -> bool:
    try:
        scrape(port)
    except (OSError, urllib.error.URLError):
        return False
    return True


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis: this test's workers may then use a long visibility timeout (one per
    Redis database) while other tests' workers use theirs."""
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        yield server


def catalogue(path: Path, origin: ImageServer) -> str:
    url = f"sqlite:///{path}"
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE products (id TEXT, image_url TEXT)"))
        for i in range(IMAGES):
            conn.execute(sa.text("INSERT INTO products VALUES (:id, :url)"),
                         {"id": f"p{i}", "url": origin.url(f"/p{i}.png")})
    return url


def test_the_backlog_gauge_counts_what_workers_hold_and_the_list_does_not(
        tagger_env, own_redis, start_worker, tmp_path, monkeypatch):
    env = {**tagger_env, "CELERY_BROKER_URL": own_redis.url, "TAGGER_ALLOW_PRIVATE_URLS": "1",
           # The first chunk is held at its fetch while the test looks: no limit may end it.
           "TAGGER_VISIBILITY_TIMEOUT": "600", "TAGGER_ITEM_TIMEOUT": "300",
           "TAGGER_FETCH_TIMEOUT": "300"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    gate = threading.Event()
    port = free_port()
    with ImageServer() as origin, Command([PRODUCER, "serve-metrics", "--address", "127.0.0.1",
                                           "--port", str(port)], env=env, cwd=tmp_path) as gauge:
        for i in range(IMAGES):
            origin.routes[f"/p{i}.png"] = Reply(image_bytes(40 + i), gate=gate)
        start_worker(env, extra=["--prefetch-multiplier", str(PREFETCH)])
        out = producer("enqueue", "--database-url", catalogue(tmp_path / "c.db", origin),
                       "--table", "products", "--chunk-size", "1")
        assert f"enqueued {IMAGES} in {IMAGES} chunks" in out

        def status() -> dict:
            return json.loads(producer("status", "--json"))

        assert origin.started.wait(60), "the worker never fetched an image"
        held = wait_until(lambda: (s := status())["reserved"] == PREFETCH and s, 60,
                          message="the worker did not prefetch")
        wait_until(lambda: answers(port), 60, message=f"serve-metrics: {gauge.stderr}")
        metrics = scrape(port)
        queue, model = held["queue"], env["TAGGER_MODEL"]
        listed = own_redis.client().llen(queue)  # type: ignore[attr-defined]

        # Every image is still to do: waiting in the list, prefetched or running.
        assert held["backlog"] == held["pending"] == IMAGES, held
        backlog = metrics[("tagger_backlog_images", (("model", model), ("queue", queue)))]
        assert backlog == held["backlog"]
        # What a list-length scaler (LLEN) sees: only the chunks no worker has taken yet.
        assert listed == held["queue_depth"] == IMAGES - PREFETCH < backlog
        chunks = {state: metrics[("tagger_queue_chunks",
                                  (("model", model), ("queue", queue), ("state", state)))]
                  for state in ("waiting", "reserved")}
        assert chunks == {"waiting": listed, "reserved": PREFETCH}

        gate.set()
        wait_until(lambda: count(env["DATABASE_URL"]) == IMAGES, 120)
        drained = wait_until(lambda: (m := scrape(port))[
            ("tagger_backlog_images", (("model", model), ("queue", queue)))] == 0 and m, 30,
            message="the gauge kept a backlog after every image was answered")
        assert status()["backlog"] == 0
        assert drained[("tagger_queue_chunks",
                        (("model", model), ("queue", queue), ("state", "waiting")))] == 0
