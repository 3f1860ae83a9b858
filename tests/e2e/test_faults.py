"""Fault injection on real processes: every enqueued image ends with exactly one result.

Real worker processes, our own redis-server (append-only), PostgreSQL, slow HTTP origins on
loopback. Faults: SIGKILL (pool child, whole worker), SIGTERM, Redis restart, PostgreSQL
connections terminated during the write, a poison chunk, duplicate enqueues and racing workers.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator

import boto3
import pytest
import redis
import sqlalchemy as sa

from producer.enqueue import Summary, enqueue
from tests.conftest import PG_ADMIN_URL
from tests.faultservers import FaultProxy, ImageServer, RedisServer, Reply, children, kill
from tests.helpers import image_bytes, wait_until
from worker.app import create_app
from worker.labels import load_labelset
from worker.settings import load_settings
from worker.store import Item, deliveries, engine_for, normalise_url, pending, results

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def env(tagger_env: dict[str, str], own_redis: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Our own Redis, a short visibility timeout, loopback origins allowed, small chunks."""
    extra = {"CELERY_BROKER_URL": own_redis.url, "TAGGER_VISIBILITY_TIMEOUT": "10",
             "TAGGER_ALLOW_PRIVATE_URLS": "1", "TAGGER_CHUNK_SIZE": "4",
             "TAGGER_MAX_DELIVERIES": "3", "TAGGER_FETCH_TIMEOUT": "5"}
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    return {**tagger_env, **extra}


@pytest.fixture
def origin() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def serve(origin: ImageServer, count: int, delay: float, prefix: str = "img") -> list[str]:
    """Put ``count`` distinct PNGs on the origin, each answered after ``delay`` seconds."""
    for i in range(count):
        origin.routes[f"/{prefix}{i}.png"] = Reply(image_bytes(1000 + i), delay=delay)
    return [origin.url(f"/{prefix}{i}.png") for i in range(count)]


def send(uris: list[str], chunk_size: int = 4, force: bool = False) -> Summary:
    """The producer's own enqueue, to the worker's queue on our Redis."""
    settings = load_settings()
    return enqueue([Item(uri) for uri in uris], app=create_app(settings), settings=settings,
                   labelset=load_labelset(settings.labels_path), source="fault test",
                   chunk_size=chunk_size, force=force)


def rows(url: str) -> list[sa.Row]:
    with engine_for(url).connect() as conn:
        return list(conn.execute(sa.select(results).order_by(results.c.uri)))


def wait_for_results(url: str, uris: list[str], timeout: float) -> dict[str, sa.Row]:
    wait_until(lambda: {r.uri for r in rows(url)} >= set(uris), timeout,
               message=f"not every image got a result in {timeout}s")
    found = rows(url)
    counts = Counter(r.uri for r in found)
    assert set(counts) == set(uris) and max(counts.values()) == 1  # exactly one result each
    return {r.uri: r for r in found}


def delivery_counts(url: str) -> list[int]:
    with engine_for(url).connect() as conn:
        return list(conn.scalars(sa.select(deliveries.c.count)))


def pending_count(url: str) -> int:
    with engine_for(url).connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(pending)))


def the_child(worker) -> int:
    return wait_until(lambda: children(worker.proc.pid), 30, message="no pool child")[0]


def test_sigkill_of_pool_child_requeues_at_once(env, origin, start_worker, monkeypatch):
    # A long visibility timeout: recovery well before it proves the parent requeued at once.
    monkeypatch.setenv("TAGGER_VISIBILITY_TIMEOUT", "60")
    env = {**env, "TAGGER_VISIBILITY_TIMEOUT": "60"}
    uris = serve(origin, 4, delay=0.6)
    worker = start_worker(env)
    send(uris)
    assert origin.started.wait(30), "the chunk never started"
    killed_at = time.monotonic()
    kill(the_child(worker))  # mid-chunk: its first download is still being answered

    by_uri = wait_for_results(env["DATABASE_URL"], uris, 50)
    assert time.monotonic() - killed_at < 50
    assert all(r.status == "done" and r.attempts >= 2 for r in by_uri.values())
    assert sum(origin.hits.values()) >= 5  # at least one image was fetched twice
    assert "SIGKILL" in worker.log()
    assert pending_count(env["DATABASE_URL"]) == 0


def test_sigkill_of_whole_worker_is_restored_after_visibility_timeout(env, origin, start_worker):
    uris = serve(origin, 4, delay=1.0)
    first = start_worker(env)
    send(uris)
    assert origin.started.wait(30)
    first.signal(signal.SIGKILL)  # the parent and its child: nobody can requeue the chunk
    killed_at = time.monotonic()
    first.proc.wait(10)
    start_worker(env)  # the replacement restores the unacked chunk once it is 10 s old

    by_uri = wait_for_results(env["DATABASE_URL"], uris, 60)
    recovered = time.monotonic() - killed_at
    assert recovered >= 9, "re-delivered before the visibility timeout: would duplicate work"
    assert recovered < 40, f"took {recovered:.0f}s: expired reservations are swept too rarely"
    assert all(r.status == "done" and r.attempts >= 2 for r in by_uri.values())


def test_sigterm_finishes_the_running_chunk(env, origin, own_redis, start_worker):
    uris = serve(origin, 8, delay=0.7)
    worker = start_worker(env)
    send(uris)  # two chunks of 4: one runs, one waits in the queue
    assert origin.started.wait(30)
    worker.signal(signal.SIGTERM, group=False)  # what a deploy or a scale-down sends
    assert worker.proc.wait(60) == 0

    by_uri = wait_for_results(env["DATABASE_URL"], uris[:4], 1)
    assert all(r.status == "done" and r.attempts == 1 for r in by_uri.values())
    assert len(rows(env["DATABASE_URL"])) == 4, "only the running chunk is finished"
    # The chunk it had not started is back in the queue at once, not held until a timeout.
    broker = redis.Redis(port=own_redis.port)
    assert broker.llen(env["TAGGER_QUEUE"]) == 1
    reserved = [json.loads(v)[2] for v in broker.hvals("unacked")]  # [message, exchange, key]
    assert env["TAGGER_QUEUE"] not in reserved


def test_redis_restart_keeps_backlog_and_worker_resumes(env, origin, own_redis, start_worker):
    uris = serve(origin, 12, delay=0.5)
    worker = start_worker(env)
    send(uris, chunk_size=2)  # six chunks: a backlog behind the running one
    assert origin.started.wait(30)
    own_redis.stop()  # SIGTERM: the append-only file holds the backlog
    time.sleep(1)
    own_redis.start()

    by_uri = wait_for_results(env["DATABASE_URL"], uris, 90)
    assert all(r.status == "done" for r in by_uri.values())
    assert worker.proc.poll() is None
    log = worker.log()
    assert "Connection to broker lost" in log or "Cannot connect" in log, log[-3000:]


def _admin_engine(url: str) -> sa.Engine:
    name = sa.make_url(url).database
    return sa.create_engine(normalise_url(sa.make_url(PG_ADMIN_URL).set(database=name)
                                          .render_as_string(False)), isolation_level="AUTOCOMMIT")


def _blocked_writer(admin: sa.Connection) -> int | None:
    return admin.scalar(sa.text(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO results%'"))


def test_postgres_connection_killed_during_the_write(env, origin, start_worker, tmp_path):
    url = env["DATABASE_URL"]
    uris = serve(origin, 4, delay=0)
    worker = start_worker(env)
    admin = _admin_engine(url)
    with admin.connect() as locker, admin.connect() as watcher:
        # Hold the results table so the worker's one upsert waits: then it is mid-write.
        locker.execute(sa.text("BEGIN"))
        locker.execute(sa.text("LOCK TABLE results IN EXCLUSIVE MODE"))
        send(uris)
        pid = wait_until(lambda: _blocked_writer(watcher), 60, message="write never started")
        assert watcher.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        worker.wait_for_log("retrying chunk", 30)
        # The killed transaction left nothing behind: no partial chunk.
        assert locker.scalar(sa.text("SELECT count(*) FROM results")) == 0
        locker.execute(sa.text("COMMIT"))
    admin.dispose()

    by_uri = wait_for_results(url, uris, 60)
    assert all(r.status == "done" and r.attempts == 2 for r in by_uri.values())
    assert pending_count(url) == 0
    assert "database" in worker.log()


def test_poison_chunk_is_parked_after_max_deliveries(env, origin, start_worker):
    uris = serve(origin, 2, delay=3.0)
    worker = start_worker({**env, "TAGGER_MAX_DELIVERIES": "2"})
    url = env["DATABASE_URL"]
    send(uris)
    killed = 0
    deadline = time.monotonic() + 150
    while not rows(url) and time.monotonic() < deadline:
        count = max(delivery_counts(url), default=0)
        if killed < count <= 2:  # every delivery kills its worker child, as a poison image would
            kill(the_child(worker))
            killed = count
        time.sleep(0.1)

    by_uri = wait_for_results(url, uris, 10)
    assert killed == 2
    for row in by_uri.values():  # parked on the third start, after two deaths
        assert (row.status, row.reason, row.attempts) == ("failed", "parked", 3)
        assert "delivered 3 times" in row.error
    assert delivery_counts(url) == [3]
    assert worker.proc.poll() is None  # the worker lives on and takes other work
    good = serve(origin, 1, delay=0, prefix="after")
    send(good)
    assert wait_for_results(url, uris + good, 60)[good[0]].status == "done"


def test_duplicate_enqueues_and_racing_workers(env, origin, start_worker):
    uris = serve(origin, 4, delay=1.0)
    url = env["DATABASE_URL"]
    start_worker(env)
    start_worker(env)
    assert send(uris).enqueued == 4
    assert send(uris).enqueued == 0  # already in flight: not sent again
    assert send(uris, force=True).enqueued == 4  # forced: the same chunk twice, both run
    by_uri = wait_for_results(url, uris, 60)
    wait_until(lambda: sorted(delivery_counts(url)) == [1, 1], 30)
    wait_until(lambda: all(origin.hits[f"/img{i}.png"] == 2 for i in range(4)), 30,
               message="the two chunks did not both run")
    time.sleep(1)
    assert all(r.status == "done" for r in by_uri.values())
    assert len(rows(url)) == 4
    assert pending_count(url) == 0


def test_s3_errors_retry_the_chunk_or_fail_the_item(env, bucket, start_worker, s3_endpoint):
    s3 = boto3.client("s3")  # straight to moto; the worker goes through the fault proxy
    s3.put_object(Bucket=bucket, Key="ok.png", Body=image_bytes(5))
    ok, missing = f"s3://{bucket}/ok.png", f"s3://{bucket}/gone.png"
    with FaultProxy(s3_endpoint) as proxy:
        start_worker({**env, "AWS_ENDPOINT_URL_S3": proxy.endpoint})
        send([missing])
        by_uri = wait_for_results(env["DATABASE_URL"], [missing], 60)
        assert (by_uri[missing].status, by_uri[missing].reason) == ("failed", "not-found")
        assert by_uri[missing].attempts == 1 and proxy.gets == 1  # at once, no retry

        # More 5xx than boto3's own retries absorb: the chunk is retried later, then succeeds.
        proxy.inject(8, 500, "InternalError")
        send([ok])
        by_uri = wait_for_results(env["DATABASE_URL"], [missing, ok], 60)
    assert (by_uri[ok].status, by_uri[ok].attempts) == ("done", 2)
    assert proxy.faults_left == 0 and proxy.gets == 1 + 9
