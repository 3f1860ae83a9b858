"""Relabel runs under faults, on real processes (a Celery worker, Redis, PostgreSQL): a range
that kills its worker, ranges whose messages a Redis restart lost, `producer cancel`, and kept
embeddings damaged in the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from testkit.commands import one_line_error, producer, rows, run_id
from testkit.images import write_images
from testkit.processes import Worker, kill
from testkit.runs import seed_kept
from testkit.services import RedisServer, admin_engine_for, blocked_writers, wait_until
from worker.core.contract import KEPT_RUNTIME, Item
from worker.db.schema import deliveries, embeddings, engine_for, pending_ranges

pytestmark = pytest.mark.timeout(300)
IMAGES = 30


def labels(folder: Path) -> str:
    path = folder / "styles.txt"
    path.write_text("简约\n复古\n北欧\n工业风\n", encoding="utf-8")
    return str(path)


def run_info(run: str) -> dict[str, Any]:
    return json.loads(producer("status", "--run", run, "--json"))["run"]  # type: ignore[no-any-return]


def seed(env: dict[str, str], count: int = IMAGES) -> list[str]:
    """Images tagged before, their embeddings kept: what `producer relabel` scores."""
    return seed_kept(env["DATABASE_URL"], env["TAGGER_MODEL"],
                     [Item(f"s3://b/{i}.jpg", key=str(i)) for i in range(count)])


def the_child(worker: Worker) -> int:
    return wait_until(lambda: (pid := worker.model_pid()) != worker.proc.pid and pid, 60,
                      message="no pool child")


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """Our own Redis without an append-only file: a restart loses every message."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    monkeypatch.setenv("CELERY_BROKER_URL", server.url)
    yield server
    server.stop()


def test_a_range_that_kills_its_worker_is_given_up_after_max_deliveries(
        tagger_env, own_redis, start_worker, tmp_path, monkeypatch):
    """Before: every death re-delivered the range, for ever (7 deliveries with 3 allowed)."""
    env = {**tagger_env, "CELERY_BROKER_URL": own_redis.url, "TAGGER_MAX_DELIVERIES": "3",
           "TAGGER_VISIBILITY_TIMEOUT": "90"}  # no time limit (0.8 of it) while it waits
    monkeypatch.setenv("TAGGER_VISIBILITY_TIMEOUT", "90")
    url = env["DATABASE_URL"]
    seed(env)
    run = run_id(producer("relabel", "--labels", labels(tmp_path)))  # sent, not yet taken
    admin = admin_engine_for(url)
    with admin.connect() as locker, admin.connect() as watcher:
        # The range's write waits on this lock: each delivery is mid-range when its child dies,
        # as one whose scoring takes all memory would be.
        locker.execute(sa.text("BEGIN"))
        locker.execute(sa.text("LOCK TABLE results IN EXCLUSIVE MODE"))
        worker = start_worker(env)
        seen: set[int] = set()
        for _ in range(3):
            seen.add(wait_until(lambda: next(iter(set(blocked_writers(watcher)) - seen), None),
                                90, message="the range's delivery never reached its write"))
            kill(the_child(worker))
        # The fourth start counts three deaths: the range is given up, not scored again.
        wait_until(lambda: run_info(run)["state"] == "stopped", 90,
                   message="the range was not given up")
        locker.execute(sa.text("COMMIT"))
    admin.dispose()
    info = run_info(run)
    assert "delivered 4 times without finishing" in info["error"], info
    assert info["pending"] == 0 and info["done"] == 0
    with engine_for(url).connect() as conn:
        assert list(conn.scalars(sa.select(deliveries.c.count))) == [4]
    # The worker lives on and scores the next run.
    again = run_id(producer("relabel", "--labels", labels(tmp_path)))
    producer("wait", "--run", again, "--timeout", "120")
    assert (run_info(again)["state"], run_info(again)["done"]) == ("complete", IMAGES)
    assert worker.exited() is None


def relabel_lost(env: dict[str, str], own_redis: RedisServer, folder: Path,
                 start_worker: Any) -> str:
    """Stop the worker, `producer relabel`, restart Redis (no AOF), start the worker: a run
    whose ranges nobody will ever answer; its id."""
    seed(env)
    run = run_id(producer("relabel", "--labels", labels(folder)))
    own_redis.stop()
    own_redis.start()
    start_worker({**env, "CELERY_BROKER_URL": own_redis.url})
    status = json.loads(producer("status", "--json"))
    assert (status["queue_depth"], status["reserved"]) == (0, 0)  # the message is gone
    assert (run_info(run)["state"], run_info(run)["pending"]) == ("running", IMAGES)
    return run


def test_ranges_lost_with_the_broker_are_taken_over_by_the_next_relabel(
        tagger_env, own_redis, start_worker, tmp_path):
    """Before: the run stayed `running` and `producer wait --all` never returned."""
    first = relabel_lost(tagger_env, own_redis, tmp_path, start_worker)
    with engine_for(tagger_env["DATABASE_URL"]).begin() as conn:  # a night later
        conn.execute(pending_ranges.update().values(
            enqueued_at=sa.func.now() - sa.text("interval '25 hours'")))
    sent = producer("relabel", "--labels", labels(tmp_path))
    assert f"took over what was left of run {first} (about {IMAGES} images" in sent, sent
    second = run_id(sent)
    producer("wait", "--all", "--timeout", "120")
    old, new = run_info(first), run_info(second)
    assert old["state"] == "stopped" and f"taken over by run {second}" in old["error"]
    assert (new["state"], new["done"], new["failed"]) == ("complete", IMAGES, 0)


def test_cancel_ends_a_run_whose_ranges_were_lost(tagger_env, own_redis, start_worker,
                                                 tmp_path):
    run = relabel_lost(tagger_env, own_redis, tmp_path, start_worker)
    said = producer("cancel", run)
    assert said.startswith(f"run {run} cancelled: 0 images answered, {IMAGES} no longer "
                           "pending; 0 messages taken off the queue"), said
    producer("wait", "--all", "--timeout", "60")
    info = run_info(run)
    assert info["state"] == "stopped" and "cancelled by `producer cancel`" in info["error"]
    assert producer("cancel", run).startswith(f"run {run} was already cancelled")
    assert one_line_error("cancel", "nosuchrun") == (
        "Error: no run nosuchrun: `producer runs` lists them")
    again = run_id(producer("relabel", "--labels", labels(tmp_path)))  # sends them again
    producer("wait", "--run", again, "--timeout", "120")
    assert producer("cancel", again).startswith(
        f"run {again} is over ({IMAGES} done, 0 failed): nothing to cancel")


def test_a_corrupt_kept_embedding_fails_its_image_alone(tagger_env, start_worker, tmp_path):
    """Before: one damaged row failed its whole batch (the range given up), and rows one byte
    long or short were read shifted."""
    url = tagger_env["DATABASE_URL"]
    contents = seed(tagger_env)
    damage = {contents[0]: "substring(vector from 1 for length(vector) - 1)",  # a byte short
              contents[1]: "vector || '\\x00'::bytea",  # a byte long
              contents[2]: "substring(vector from 1 for 10)"}  # cut short (35 bytes at 16)
    with engine_for(url).begin() as conn:
        for sha, change in damage.items():
            conn.execute(sa.text(f"UPDATE embeddings SET vector = {change} "
                                 "WHERE sha256 = :sha"), {"sha": bytes.fromhex(sha)})
    start_worker(tagger_env)
    run = run_id(producer("relabel", "--labels", labels(tmp_path)))
    producer("wait", "--run", run, "--timeout", "120")
    by_sha = {r.content_sha256: r for r in rows(url, run_id=run).values()}
    assert len(by_sha) == IMAGES
    failed = {sha: r.error for sha, r in by_sha.items() if r.status == "failed"}
    assert set(failed) == set(damage) and {by_sha[s].reason for s in failed} == {
        "corrupt-embedding"}
    assert "is 1 byte too short" in failed[contents[0]]
    assert "is 1 byte too long" in failed[contents[1]]
    assert "retry-failed --reason corrupt-embedding" in failed[contents[2]]
    assert run_info(run)["state"] == "complete"
    with engine_for(url).connect() as conn:  # removed: the next tagging keeps new ones
        kept = {bytes(v).hex() for v in conn.scalars(sa.select(embeddings.c.sha256))}
    assert kept == set(contents) - set(damage)


def test_a_corrupt_kept_embedding_fails_one_image_of_a_nightly_chunk(tagger_env, start_worker,
                                                                      tmp_path):
    """Images sent with their content's hash are scored from kept embeddings: before, one
    damaged row failed the whole chunk (internal-error)."""
    url = tagger_env["DATABASE_URL"]
    write_images(tmp_path / "images", 6)
    start_worker(tagger_env)
    first = run_id(producer("enqueue", str(tmp_path / "images")))
    producer("wait", "--run", first, "--timeout", "120")
    damaged = sorted(r.content_sha256 for r in rows(url, run_id=first).values())[0]
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("UPDATE embeddings SET vector = vector || '\\x00'::bytea "
                             "WHERE sha256 = :sha"), {"sha": bytes.fromhex(damaged)})
    second = run_id(producer("enqueue", str(tmp_path / "images"), "--labels", labels(tmp_path)))
    producer("wait", "--run", second, "--timeout", "120")
    tagged = rows(url, run_id=second).values()
    assert [(r.content_sha256, r.reason) for r in tagged if r.status == "failed"] == [
        (damaged, "corrupt-embedding")]
    assert [r.runtime for r in tagged if r.status == "done"] == [KEPT_RUNTIME] * 5
