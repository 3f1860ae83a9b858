"""Fault injection on real processes: every enqueued image ends with exactly one result.

Real worker processes, our own redis-server (append-only), PostgreSQL, slow HTTP origins on
loopback. Faults: SIGKILL (pool child, whole worker), SIGTERM, Redis restart, PostgreSQL
connections terminated during the write, a poison chunk, duplicate enqueues and racing workers.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import datetime

import boto3
import pytest
import redis
import sqlalchemy as sa
from kombu import Connection

from producer.sending import sending_app
from testkit.commands import count, rows, send, wait_for_results
from testkit.faults import FaultProxy, ImageServer, Reply
from testkit.images import image_bytes
from testkit.processes import Worker, kill
from testkit.services import RedisServer, admin_engine_for, blocked_writers, wait_until
from worker.core.celeryconf import tagging_queue, transport_options
from worker.core.contract import TASK_NAME, Chunk, Item
from worker.core.labels import load_labelset
from worker.core.settings import load_settings
from worker.db import labelsets
from worker.db.schema import deliveries, engine_for
from worker.service import visibility

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def env(tagger_env: dict[str, str], own_redis: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Our own Redis (emptied), a short visibility timeout, loopback origins, small chunks."""
    own_redis.client().flushall()  # type: ignore[attr-defined]
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


def serve(origin: ImageServer, number: int, delay: float, prefix: str = "img") -> list[str]:
    """Put ``number`` distinct PNGs on the origin, each answered after ``delay`` seconds."""
    for i in range(number):
        origin.routes[f"/{prefix}{i}.png"] = Reply(image_bytes(1000 + i), delay=delay)
    return [origin.url(f"/{prefix}{i}.png") for i in range(number)]


def delivery_counts(url: str) -> list[int]:
    with engine_for(url).connect() as conn:
        return list(conn.scalars(sa.select(deliveries.c.count)))


def the_child(worker: Worker) -> int:
    """The prefork child that holds the model (waits for one to be forked)."""
    return wait_until(lambda: (pid := worker.model_pid()) != worker.proc.pid and pid, 60,
                      message="no pool child")


def test_sigkill_of_pool_child_requeues_at_once(env, origin, start_worker, monkeypatch):
    # A visibility timeout longer than the wait for the results: results at all prove that
    # the parent requeued the chunk at once (no sweep could restore it in time).
    monkeypatch.setenv("TAGGER_VISIBILITY_TIMEOUT", "900")
    env = {**env, "TAGGER_VISIBILITY_TIMEOUT": "900"}
    uris = serve(origin, 4, delay=0.6)
    worker = start_worker(env)
    send(uris)
    assert origin.started.wait(30), "the chunk never started"
    kill(the_child(worker))  # mid-chunk: its first download is still being answered

    by_uri = wait_for_results(env["DATABASE_URL"], uris, 120)
    assert all(r.status == "done" and r.attempts >= 2 for r in by_uri.values())
    assert sum(origin.hits.values()) >= 5  # at least one image was fetched twice
    assert "SIGKILL" in worker.log()
    assert count(env["DATABASE_URL"], "pending") == 0


def test_sigkill_of_whole_worker_is_restored_after_visibility_timeout(env, origin, start_worker,
                                                                     tmp_path):
    uris = serve(origin, 4, delay=1.0)
    other = Worker(env, tmp_path / "other-worker.log").launch()  # both load at once
    try:
        workers = [start_worker(env), other]
        other.wait_ready(120)
        send(uris)
        assert origin.started.wait(30)
        # The parent and its child of the worker that holds the chunk: nobody can requeue it.
        received = wait_until(lambda: next(((w, r) for w in workers for r in w.records()
                                            if str(r["message"]).endswith("received")), None),
                              60)
        holder, delivered = received[0], logged_at(received[1])
        sweep_lock_left_by_a_death_mid_sweep(env)
        holder.signal(signal.SIGKILL)
        holder.proc.wait(10)
        # The other one restores the unacked chunk once it is 10 s old (and the lock expired);
        # the deadline only catches a restore that never comes.
        by_uri = wait_for_results(env["DATABASE_URL"], uris, 120)
        recovered = (datetime.now() - delivered).total_seconds()
    finally:
        other.stop()
    # Counted from the delivery, so a busy machine only makes it longer.
    assert recovered >= 9, "re-delivered before the visibility timeout: would duplicate work"
    assert all(r.status == "done" and r.attempts >= 2 for r in by_uri.values())


def logged_at(record: dict) -> datetime:
    """When a worker's JSON log record was written (logging's local asctime)."""
    return datetime.strptime(str(record["time"]), "%Y-%m-%d %H:%M:%S,%f")


def sweep_lock_left_by_a_death_mid_sweep(env: dict[str, str]) -> None:
    """Take kombu's restore-sweep lock as a worker's sweep does, and never release it."""
    options = transport_options(load_settings(env))
    with Connection(env["CELERY_BROKER_URL"], transport_options=options) as connection:
        channel = connection.default_channel
        lock = channel.client.lock(channel.unacked_mutex_key, timeout=channel.unacked_mutex_expire)
        assert lock.acquire(blocking=False)


def test_a_deleted_timeout_claim_lets_no_shorter_timeout_requeue_a_running_chunk(
        env, origin, own_redis, start_worker, tmp_path):
    """Deleting the running worker's claim by hand until another worker with a shorter
    visibility timeout is up does not let that one re-queue the running chunk (before: the
    chunk ran a second time); the newcomer stops once the claim is back."""
    slow = {**env, "TAGGER_VISIBILITY_TIMEOUT": "90", "TAGGER_FETCH_TIMEOUT": "60",
            "TAGGER_ITEM_TIMEOUT": "60"}
    uris = serve(origin, 2, delay=30.0)  # the chunk runs 30 s, three times the other's timeout
    holder = start_worker(slow)
    send(uris)
    assert origin.started.wait(30)
    broker = own_redis.client()
    (claim,) = broker.scan_iter(match=f"{visibility.PREFIX}*")
    other = Worker({**env, "TAGGER_VISIBILITY_TIMEOUT": "10"}, tmp_path / "other.log").launch()
    try:
        while not other.ready():  # the holder's claim stays away until the newcomer runs
            broker.delete(claim)
            assert other.exited() is None, other.log()[-3000:]
            time.sleep(0.1)
        assert other.proc.wait(60) == 1  # stopped by itself once the holder's claim was back
        by_uri = wait_for_results(env["DATABASE_URL"], uris, 60)
    finally:
        other.kill()
    assert "stopping: workers on" in other.log() and "TAGGER_VISIBILITY_TIMEOUT=90" in other.log()
    assert all(r.status == "done" and r.attempts == 1 for r in by_uri.values())
    assert [origin.hits[f"/img{i}.png"] for i in range(2)] == [1, 1], "the chunk ran twice"
    assert "had vanished" in holder.log()  # the holder noticed and restored its claim


def test_sigterm_finishes_the_running_chunk(env, origin, own_redis, start_worker):
    uris = serve(origin, 8, delay=0.7)
    worker = start_worker(env)
    send(uris)  # two chunks of 4: one runs, one waits in the queue
    assert origin.started.wait(30)
    worker.proc.send_signal(signal.SIGTERM)  # to the parent only: what a deploy sends
    assert worker.proc.wait(60) == 0

    by_uri = wait_for_results(env["DATABASE_URL"], uris[:4], 1)
    assert all(r.status == "done" and r.attempts == 1 for r in by_uri.values())
    assert count(env["DATABASE_URL"]) == 4, "only the running chunk is finished"
    # The chunk it had not started is back in the queue at once, not held until a timeout.
    broker, queue = redis.Redis(port=own_redis.port), tagging_queue(load_settings(env))
    assert broker.llen(queue) == 1
    reserved = [json.loads(v)[2] for v in broker.hvals("unacked")]  # [message, exchange, key]
    assert queue not in reserved


def test_redis_restart_keeps_backlog_and_worker_resumes(env, origin, own_redis, start_worker):
    uris = serve(origin, 12, delay=0.5)
    worker = start_worker(env)
    send(uris, chunk_size=2)  # six chunks: a backlog behind the running one
    assert origin.started.wait(30)
    own_redis.stop()  # SIGTERM: the append-only file holds the backlog
    worker.wait_for(lambda: "Connection to broker lost" in worker.log()
                    or "Cannot connect" in worker.log(), 60,
                    "the worker did not notice the broker was gone")
    own_redis.start()

    by_uri = wait_for_results(env["DATABASE_URL"], uris, 90)
    assert all(r.status == "done" for r in by_uri.values())
    assert worker.exited() is None


def _blocked_writer(admin: sa.Connection) -> int | None:
    return next(iter(blocked_writers(admin)), None)


def test_postgres_connection_killed_during_the_write(env, origin, start_worker, monkeypatch):
    # A time limit (0.8 x visibility) well above the seconds the write is held here.
    monkeypatch.setenv("TAGGER_VISIBILITY_TIMEOUT", "30")
    env = {**env, "TAGGER_VISIBILITY_TIMEOUT": "30"}
    url = env["DATABASE_URL"]
    uris = serve(origin, 4, delay=0)
    worker = start_worker(env)
    admin = admin_engine_for(url)
    with admin.connect() as locker, admin.connect() as watcher:
        # Hold the results table so the worker's one upsert waits: then it is mid-write.
        locker.execute(sa.text("BEGIN"))
        locker.execute(sa.text("LOCK TABLE results IN EXCLUSIVE MODE"))
        send(uris)
        pid = wait_until(lambda: _blocked_writer(watcher), 60, message="write never started")
        assert watcher.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        # The write is retried in place, on a new connection, and waits on the lock again.
        worker.wait_for_log("database call write_results failed", 30)
        wait_until(lambda: _blocked_writer(watcher) not in (None, pid), 30,
                   message="the write was not retried")
        # The killed transaction left nothing behind: no partial chunk.
        assert locker.scalar(sa.text("SELECT count(*) FROM results")) == 0
        locker.execute(sa.text("COMMIT"))
    admin.dispose()

    by_uri = wait_for_results(url, uris, 60)
    # One delivery: the retry happened inside the write, not as a second run of the chunk.
    assert all(r.status == "done" and r.attempts == 1 for r in by_uri.values())
    assert delivery_counts(url) == [1]
    assert count(url, "pending") == 0
    records = [r for r in worker.records() if "write_results" in str(r.get("message"))]
    assert len(records) == 1 and "retrying" in str(records[0]["message"])
    assert "retrying chunk" not in worker.log()


def send_with_retries_header(uris: list[str], retries: int) -> None:
    """A chunk message whose own ``retries`` header says what a sender wants it to say."""
    settings = load_settings()
    labelset = load_labelset(settings.labels_path)
    labelsets.save_labelset(engine_for(settings.database_url), labelset)
    chunk = Chunk(items=tuple(Item(u) for u in uris), model=settings.model,
                  labelset_id=labelset.id)
    sending_app(settings).send_task(TASK_NAME, kwargs=chunk.encode(), retries=retries,
                                    queue=tagging_queue(settings))


@pytest.mark.parametrize("retries_header", [None, 1_000_000])
def test_poison_chunk_is_parked_after_max_deliveries(retries_header, env, origin, start_worker):
    uris = serve(origin, 2, delay=2.0)
    worker = start_worker({**env, "TAGGER_MAX_DELIVERIES": "2"})
    url = env["DATABASE_URL"]
    if retries_header is None:
        send(uris)
    else:  # the header does not make deaths look like retries: deliveries are counted
        send_with_retries_header(uris, retries_header)
    killed = 0
    deadline = time.monotonic() + 150
    while not rows(url) and time.monotonic() < deadline:
        deliveries_so_far = max(delivery_counts(url), default=0)
        if killed < deliveries_so_far <= 2:  # every delivery kills its child, as a poison would
            kill(the_child(worker))
            killed = deliveries_so_far
        time.sleep(0.1)

    by_uri = wait_for_results(url, uris, 60)
    assert killed == 2
    for row in by_uri.values():  # parked on the third start, after two deaths
        assert (row.status, row.reason, row.attempts) == ("failed", "parked", 3)
        assert "delivered 3 times" in row.error
    assert delivery_counts(url) == [3]
    assert worker.exited() is None  # the worker lives on and takes other work
    good = serve(origin, 1, delay=0, prefix="after")
    send(good)
    assert wait_for_results(url, uris + good, 60)[good[0]].status == "done"


def test_duplicate_enqueues_and_racing_workers(env, origin, start_worker, tmp_path):
    uris = serve(origin, 4, delay=1.0)
    url = env["DATABASE_URL"]
    second = Worker(env, tmp_path / "second-worker.log").launch()  # both load at once
    try:
        first = start_worker(env)
        second.wait_ready(120)
        race(uris, origin, url, [first, second])
    finally:
        second.stop()


def race(uris: list[str], origin: ImageServer, url: str, workers: list[Worker]) -> None:
    assert send(uris).enqueued == 4
    assert send(uris).enqueued == 0  # already in flight: not sent again
    assert send(uris, force=True).enqueued == 4  # forced: the same chunk twice, both run
    by_uri = wait_for_results(url, uris, 60)
    wait_until(lambda: sorted(delivery_counts(url)) == [1, 1], 30)
    wait_until(lambda: all(origin.hits[f"/img{i}.png"] == 2 for i in range(4)), 30,
               message="the two chunks did not both run")
    wait_until(lambda: sum(r["message"] == "chunk tagged" for w in workers
                           for r in w.records()) == 2, 60,
               message="the two chunks were not both written")
    assert all(r.status == "done" for r in by_uri.values())
    assert count(url) == 4
    assert count(url, "pending") == 0


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

        # Requests that can never succeed fail at once too: a bucket name S3 cannot have (boto3
        # refuses to send it), an answer that the request itself is wrong.
        bad_name, refused = "s3://RT_bad_bucket!/x.jpg", f"s3://{bucket}/refused.png"
        send([bad_name])
        assert wait_for_results(env["DATABASE_URL"], [missing, bad_name], 60)[bad_name].reason \
            == "bad-uri"
        proxy.inject(1, 400, "InvalidArgument")
        send([refused])
        by_uri = wait_for_results(env["DATABASE_URL"], [missing, bad_name, refused], 60)
        assert {(by_uri[u].reason, by_uri[u].attempts) for u in (bad_name, refused)} == {
            ("bad-uri", 1)}
        assert proxy.gets == 2

        # More 5xx than boto3's own retries absorb: the chunk is retried later, then succeeds.
        proxy.inject(8, 500, "InternalError")
        send([ok])
        by_uri = wait_for_results(env["DATABASE_URL"], [missing, bad_name, refused, ok], 60)
    assert (by_uri[ok].status, by_uri[ok].attempts) == ("done", 2)
    assert proxy.faults_left == 0 and proxy.gets == 2 + 9
