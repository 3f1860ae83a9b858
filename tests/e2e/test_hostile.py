"""Hostile input and stuck work against a real worker: the broker, images, rows, retries.

Each case here broke a worker or a run before its fix (issue "Hostile input and stuck work").
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from pathlib import Path

import pytest
import sqlalchemy as sa

from producer.sending import send, sending_app
from testkit.commands import producer, rows
from testkit.images import image_bytes, png_bomb, save, scan_bomb
from testkit.processes import rss_kib
from testkit.services import RedisServer, wait_until
from worker.core.celeryconf import tagging_queue
from worker.core.contract import TASK_NAME, Chunk, Item
from worker.core.labels import load_labelset
from worker.core.settings import load_settings
from worker.db import labelsets
from worker.db.schema import engine_for
from worker.service.broker_guards import DEAD_LETTERS

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
    # Refused entries that carry secrets, in the clear and in a base64 body
    secret = "https://bob:Pa55@img.example.com/a.jpg?X-Amz-Signature=S1GN&t=https://T0K@x/"
    body = json.dumps([[], {"items": [{"uri": secret}]}, {}]).encode()
    untagged = dict(real, body=base64.b64encode(body).decode(),
                    headers={k: v for k, v in real["headers"].items() if k != "compression"},
                    properties={**real["properties"], "delivery_tag": None})
    for raw in [b"not json at all", b"[1, 2, 3]", json.dumps({"body": "x"}).encode(),
                json.dumps(bomb).encode(), json.dumps(bz2).encode(),
                json.dumps(builtin).encode(), json.dumps(untagged).encode(),
                f"not json: {secret}".encode()]:
        redis.lpush(tagging_queue(load_settings()), raw)
    settings = load_settings()
    send(settings, Chunk(items=(Item("a"),), model=settings.model, labelset_id="bad id!"))
    good = folder_of(tmp_path, {"good.png": image_bytes(1), "no-repr.png": image_bytes(2),
                                "empty-repr.png": image_bytes(3)})
    # Other producers: one leaves kwargsrepr to Celery (every URI), one sends it empty.
    app = sending_app(settings)
    for uri, kwargsrepr in ((good[1], None), (good[2], "")):
        app.send_task(TASK_NAME, kwargs=chunk([uri]).encode(), queue=tagging_queue(settings),
                      kwargsrepr=kwargsrepr)
    send(settings, chunk(good[:1]))

    found = wait_until(lambda: len(r := rows(env["DATABASE_URL"])) == 3 and r, 60,
                       message="the good chunks behind the hostile ones were not tagged")
    assert {r.status for r in found.values()} == {"done"} and worker.exited() is None
    log = worker.log()
    assert log.count("refused a malformed message") == 5
    assert redis.llen(DEAD_LETTERS) == 5
    kept = b"".join(redis.lrange(DEAD_LETTERS, 0, -1)).decode()
    assert "img.example.com/a.jpg" in kept  # the decoded body, to look at
    for text in ("Pa55", "S1GN", "T0K@"):
        assert text not in kept and text not in log, text
    for name in ("no-repr.png", "empty-repr.png"):  # whatever the sender wrote, no arguments
        assert name not in log, name
    assert "<1 images>" in log
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
    # IPv6 spellings of loopback: refused at once, never retried as transient
    blocked = ["http://[::127.0.0.1]:9/x.jpg", "http://[64:ff9b::7f00:1]:9/x.jpg",
               "http://[::ffff:0:127.0.0.1]:9/x.jpg", "http://[2002:7f00:1::1]:9/x.jpg"]
    uris += [str(fifo), secret.as_uri(), "file:///etc/shadow", "http://[::1/x.jpg",
             "s3://bucket/a\0b.jpg", *blocked]
    send(load_settings(), chunk(uris))
    # Each image is bounded by its own limit (the reasons below say which); the deadline only
    # catches a chunk that never ends.
    found = wait_until(lambda: len(r := rows(env["DATABASE_URL"])) == len(uris) and r, 120,
                       message="the hostile chunk never finished")
    stored = {u.replace("\0", "\\x00"): u for u in uris}  # a NUL is kept as \x00
    reasons = {Path(u).name if "://" not in u else u: found[s].reason
               for s, u in stored.items()}
    assert reasons == {
        "ok.png": None, "ok2.jpg": None, "scans.jpg": "timeout", "big.webp": "too-much-memory",
        "bomb.png": "too-many-pixels", "fifo.jpg": "not-a-file",
        secret.as_uri(): "outside-roots", "file:///etc/shadow": "outside-roots",
        "http://[::1/x.jpg": "bad-uri", "s3://bucket/a\0b.jpg": "bad-uri",
        **dict.fromkeys(blocked, "blocked-address")}
    assert found["file:///etc/shadow"].content_sha256 is None
    # Afterwards the same worker tags a plain image, memory back near warm.
    late = folder_of(tmp_path, {"late.png": image_bytes(9)})
    send(load_settings(), chunk(late))
    assert wait_until(lambda: rows(env["DATABASE_URL"]).get(late[0]), 60).status == "done"
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
        signed, plain = "/busy.png?X-Amz-Signature=s3cr3t-sig&w=200", "/plain.png"  # presigned
        for path in (signed, plain):
            origin.routes[path] = Reply(b"busy", status=503)
        url, stored = origin.url(signed), origin.url("/busy.png?w=200")
        worker = start_worker(env)
        send(load_settings(), chunk([url, origin.url(plain)]))
        found = wait_until(lambda: len(r := rows(env["DATABASE_URL"])) == 2 and r, 90,
                           message="the chunk was never given up")
        assert (found[stored].status, found[stored].reason) == ("failed", "transient")
        assert found[stored].signed  # stored without its signature, which it needs
        assert origin.hits[signed] == 3  # the first try and two retries, no more
        assert "s3cr3t-sig" not in found[stored].error and "s3cr3t-sig" not in worker.log()
        assert "X-Amz-Signature=***" in found[stored].error
        assert json.loads(producer("status", "--json"))["failed_by_reason"] == {"transient": 2}
        origin.routes[signed], origin.routes[plain] = Reply(image_bytes(4)), Reply(image_bytes(5))
        out = producer("retry-failed", "--reason", "transient")
        assert "1 failed images had signed URLs" in out and "re-enqueued 1 failed" in out
        wait_until(lambda: rows(env["DATABASE_URL"])[origin.url(plain)].status == "done", 60)
        assert stored not in rows(env["DATABASE_URL"])  # cleared, for the next listing
        # The next listing brings it signed afresh: the same image, tagged now.
        origin.routes[signed.replace("s3cr3t", "fresh")] = Reply(image_bytes(4))
        send(load_settings(), chunk([url.replace("s3cr3t", "fresh")]))
        wait_until(lambda: rows(env["DATABASE_URL"]).get(stored, found[stored]).status
                   == "done", 60)
    exported = producer("export")
    assert "s3cr3t-sig" not in exported and "fresh-sig" not in exported


def test_a_forged_retries_header_neither_ends_nor_prolongs_retries(env, start_worker):
    """Any sender can write a message's retries header: the workers' own records bound the
    retries (before: 1,000,000 gave up at once, -1,000,000 retried for ever)."""
    from testkit.faults import ImageServer, Reply

    env = {**env, "TAGGER_CHUNK_RETRIES": "2", "TAGGER_ALLOW_PRIVATE_URLS": "1",
           "TAGGER_VISIBILITY_TIMEOUT": "30"}
    with ImageServer() as origin:
        paths = {1_000_000: "/forged-high.png", -1_000_000: "/forged-low.png"}
        for path in paths.values():
            origin.routes[path] = Reply(b"busy", status=503)
        start_worker(env)
        settings = load_settings()
        for header, path in paths.items():
            sending_app(settings).send_task(TASK_NAME, kwargs=chunk([origin.url(path)]).encode(),
                                            queue=tagging_queue(settings), retries=header)
        found = wait_until(lambda: len(r := rows(env["DATABASE_URL"])) == 2 and r, 120,
                           message="the chunks were never given up")
    assert {(r.status, r.reason) for r in found.values()} == {("failed", "transient")}
    assert [origin.hits[path] for path in paths.values()] == [3, 3]  # 1 try, 2 retries each


def test_a_url_inside_a_parameter_is_stored_without_its_secrets(env, start_worker):
    """A catalogue URL whose parameter holds another URL, percent-encoded, with a password and
    a signature: before, both were stored in results.uri (masked only in output and logs)."""
    from testkit.commands import send as enqueue
    from testkit.faults import ImageServer, Reply
    from worker.db.schema import pending

    env = {**env, "TAGGER_ALLOW_PRIVATE_URLS": "1"}
    path = ("/i.png?redirect=https%3A%2F%2Fu%3APASSWORD%40cdn.example%2Fa.jpg%3Fw%3D1%26sig%3D"
            "SECRET&w=2")
    with ImageServer() as origin:
        origin.routes[path] = Reply(image_bytes(6))
        stored = origin.url("/i.png?redirect=https%3A%2F%2Fcdn.example%2Fa.jpg%3Fw%3D1&w=2")
        enqueue([origin.url(path)])
        with engine_for(env["DATABASE_URL"]).connect() as conn:
            assert list(conn.scalars(sa.select(pending.c.uri))) == [stored]
        worker = start_worker(env)
        found = wait_until(lambda: rows(env["DATABASE_URL"]).get(stored), 60,
                           message="the image was never tagged")
        assert (found.status, found.signed, origin.hits[path]) == ("done", True, 1)
    shown = producer("export") + worker.log() + repr(found)
    assert "PASSWORD" not in shown and "SECRET" not in shown
