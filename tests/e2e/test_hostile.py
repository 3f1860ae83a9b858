"""Hostile input and stuck work against a real worker: the broker, images, rows, retries.

Each case here broke a worker or a run before its fix (issue "Hostile input and stuck work").
"""

from __future__ import annotations

import base64
import json
import os
import time
import zlib
from pathlib import Path

import pytest

from producer.sending import send, sending_app
from testkit.commands import producer, rows
from testkit.images import image_bytes, png_bomb, save, scan_bomb
from testkit.processes import rss_kib
from testkit.services import RedisServer, wait_until
from worker.broker_guards import DEAD_LETTERS
from worker.core.celeryconf import tagging_queue
from worker.core.contract import TASK_NAME, Chunk, Item
from worker.core.labels import load_labelset
from worker.core.settings import load_settings
from worker.db import labelsets
from worker.db.schema import engine_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def own_redis(tmp_path: Path) -> RedisServer:
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        yield server


@pytest.fixture
def env(tagger_env: dict[str, str], own_redis: RedisServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {**tagger_env, "CELERY_BROKER_URL": own_redis.url,
              "TAGGER_FILE_ROOTS": str(tmp_path / "images")}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def chunk(uris: list[str], run_id: str | None = None) -> Chunk:
    settings = load_settings()
    labelset = load_labelset(settings.labels_path)
    labelsets.save_labelset(engine_for(settings.database_url), labelset)
    return Chunk(items=tuple(Item(u) for u in uris), model=settings.model,
                 labelset_id=labelset.id, run_id=run_id)


def folder_of(tmp_path: Path, images: dict[str, bytes]) -> list[str]:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return [str(folder / name) for name in images]


def envelope(redis: object) -> dict:
    """A real message as the producer sends it, read back raw from Redis (to be tampered)."""
    settings = load_settings({**os.environ, "TAGGER_QUEUE": "scratch"})
    send(settings, chunk(["/nowhere.png"]))
    return json.loads(redis.rpop(tagging_queue(settings)))  # type: ignore[attr-defined]


def test_the_broker_is_not_trusted(env, own_redis, start_worker, tmp_path):
    """Malformed entries, a compression bomb, a built-in task, bad arguments, another timeout."""
    worker = start_worker(env)
    warm = rss_kib(worker.proc.pid)
    redis = own_redis.client()
    real = envelope(redis)
    gzip = {**real["headers"], "compression": "application/x-gzip"}
    bomb = dict(real, headers=gzip,  # 512 MiB of zeros in 0.5 MiB
                body=base64.b64encode(zlib.compress(b"\0" * (512 * 2**20), 9)).decode())
    bz2 = dict(bomb, headers={**gzip, "compression": "application/x-bz2"})
    builtin = dict(real, headers={**real["headers"], "task": "celery.accumulate",
                                  "id": "builtin-1"})
    for raw in [b"not json at all", b"[1, 2, 3]", json.dumps({"body": "x"}).encode(),
                json.dumps(bomb).encode(), json.dumps(bz2).encode(),
                json.dumps(builtin).encode()]:
        redis.lpush(tagging_queue(load_settings()), raw)
    settings = load_settings()
    send(settings, Chunk(items=(Item("a"),), model=settings.model, labelset_id="bad id!"))
    good = folder_of(tmp_path, {"good.png": image_bytes(1)})
    send(settings, chunk(good))

    found = wait_until(lambda: rows(env["DATABASE_URL"]).get(good[0]), 60,
                       message="the good chunk behind the hostile ones was not tagged")
    assert found.status == "done" and worker.exited() is None
    log = worker.log()
    assert log.count("refused a malformed message") == 3
    assert redis.llen(DEAD_LETTERS) == 3
    assert "unpacks to over" in log and "compression is not accepted" in log
    assert "Received unregistered task of type 'celery.accumulate'" in log
    assert "celery.accumulate[builtin-1] succeeded" not in log
    assert "dropped a malformed chunk message" in log
    grown = (rss_kib(worker.proc.pid) - warm) / 1024
    assert grown < 200, f"the worker's main process grew by {grown:.0f} MiB"
    # Workers on one Redis database agree on the visibility timeout, or refuse to start.
    with pytest.raises(RuntimeError, match="exited with 1") as refused:
        start_worker({**env, "TAGGER_VISIBILITY_TIMEOUT": "20"}, ready_timeout=60)
    assert "TAGGER_VISIBILITY_TIMEOUT=30" in str(refused.value)
    assert "must agree" in str(refused.value)


def test_hostile_images_fail_alone_and_the_worker_recovers(env, start_worker, tmp_path):
    env = {**env, "TAGGER_ITEM_TIMEOUT": "3", "TAGGER_MAX_IMAGE_MEMORY": str(256 * 2**20)}
    worker = start_worker(env)
    warm_mib = worker.rss_mib()
    uris = folder_of(tmp_path, {
        "ok.png": image_bytes(1), "scans.jpg": scan_bomb(8192, 3000),
        "big.webp": save(_flat(5000, 5000, "RGBA"), "WEBP", lossless=True),
        "bomb.png": png_bomb(20_000, 20_000), "ok2.jpg": image_bytes(2, fmt="JPEG")})
    fifo = tmp_path / "images" / "fifo.jpg"
    os.mkfifo(fifo)
    secret = tmp_path / "secret.jpg"  # outside every allowed folder
    secret.write_bytes(image_bytes(3, fmt="JPEG"))
    uris += [str(fifo), secret.as_uri(), "file:///etc/shadow", "http://[::1/x.jpg",
             "s3://bucket/a\0b.jpg"]
    started = time.monotonic()
    send(load_settings(), chunk(uris))
    found = wait_until(lambda: len(r := rows(env["DATABASE_URL"])) == len(uris) and r, 120,
                       message="the hostile chunk never finished")
    stored = {u.replace("\0", "\\x00"): u for u in uris}  # a NUL is kept as \x00
    reasons = {Path(u).name if "://" not in u else u: found[s].reason
               for s, u in stored.items()}
    assert reasons == {
        "ok.png": None, "ok2.jpg": None, "scans.jpg": "timeout", "big.webp": "too-much-memory",
        "bomb.png": "too-many-pixels", "fifo.jpg": "not-a-file",
        secret.as_uri(): "outside-roots", "file:///etc/shadow": "outside-roots",
        "http://[::1/x.jpg": "bad-uri", "s3://bucket/a\0b.jpg": "bad-uri"}
    assert time.monotonic() - started < 60
    assert found["file:///etc/shadow"].content_sha256 is None
    # Afterwards the same worker tags a plain image within seconds, memory back near warm.
    late = folder_of(tmp_path, {"late.png": image_bytes(9)})
    sent = time.monotonic()
    send(load_settings(), chunk(late))
    wait_until(lambda: late[0] in rows(env["DATABASE_URL"]), 30)
    assert time.monotonic() - sent < 10
    assert worker.rss_mib() < warm_mib + 200


def _flat(width: int, height: int, mode: str) -> object:
    from PIL import Image

    return Image.new(mode, (width, height), (10, 20, 30, 255)[: len(mode)])


def test_retries_are_bounded_then_parked_and_resendable(env, start_worker, tmp_path):
    """Whatever a message's own retries header says (any sender can write it): the workers'
    records bound the retries, neither ending them at once nor letting them run for ever."""
    from testkit.faults import ImageServer, Reply

    env = {**env, "TAGGER_CHUNK_RETRIES": "2", "TAGGER_ALLOW_PRIVATE_URLS": "1",
           "TAGGER_VISIBILITY_TIMEOUT": "30"}
    with ImageServer() as origin:
        paths = {"honest": "/busy.png?X-Amz-Signature=s3cr3t-sig&w=200",  # presigned, say
                 1_000_000: "/forged-high.png", -1_000_000: "/forged-low.png"}
        urls = {origin.url(path): header for header, path in paths.items()}
        for path in paths.values():
            origin.routes[path] = Reply(b"busy", status=503)
        worker = start_worker(env)
        settings = load_settings()
        for url, header in urls.items():
            sending_app(settings).send_task(
                TASK_NAME, kwargs=chunk([url]).encode(), queue=tagging_queue(settings),
                retries=0 if header == "honest" else header)
        found = wait_until(lambda: len(r := rows(env["DATABASE_URL"])) == 3 and r, 120,
                           message="the chunks were never given up")
        assert {(r.status, r.reason) for r in found.values()} == {("failed", "transient")}
        assert [origin.hits[path] for path in paths.values()] == [3, 3, 3]  # 1 try, 2 retries
        url = origin.url(paths["honest"])
        assert "s3cr3t-sig" not in found[url].error and "s3cr3t-sig" not in worker.log()
        assert "X-Amz-Signature=***" in found[url].error
        assert json.loads(producer("status", "--json"))["failed_by_reason"] == {"transient": 3}
        for path in paths.values():
            origin.routes[path] = Reply(image_bytes(4))
        assert "re-enqueued 3 failed" in producer("retry-failed", "--reason", "transient")
        wait_until(lambda: {r.status for r in rows(env["DATABASE_URL"]).values()} == {"done"},
                   60)
    exported = producer("export")
    assert "s3cr3t-sig" not in exported and "X-Amz-Signature=***" in exported
