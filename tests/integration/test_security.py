"""Guards against hostile input: pickled messages, credentials in messages, image bombs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import kombu.compression
import numpy as np
import psutil
import pytest
import redis
import sqlalchemy as sa
from PIL import Image

from producer.sending import sending_app
from testkit.commands import invoke
from testkit.images import image_bytes, png_bomb, save, scan_bomb
from testkit.services import REDIS_URL, reset_s3_clients, wait_until
from worker.core.celeryconf import tagging_queue
from worker.core.contract import TASK_NAME
from worker.core.errors import ItemError
from worker.core.labels import load_labelset
from worker.core.pixels import Preprocess
from worker.core.settings import Settings, load_settings
from worker.db.schema import deliveries, engine_for, results
from worker.prep.pool import PrepPool, prep_pool

SPEC = Preprocess(height=32, width=32)


class OpensAFile:
    """Unpickling this creates a file: proof that a pickled message was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return open, (str(self.path), "w")


def result_rows(url: str) -> dict[str, sa.Row]:
    with engine_for(url).connect() as conn:
        return {r.uri: r for r in conn.execute(sa.select(results))}


@pytest.mark.timeout(180)
def test_pickled_message_is_refused(tagger_env, start_worker, tmp_path, labels_file,
                                    monkeypatch):
    monkeypatch.setenv("TAGGER_FILE_ROOTS", str(tmp_path))
    worker = start_worker({**tagger_env, "TAGGER_FILE_ROOTS": str(tmp_path)})
    settings = load_settings()
    app = sending_app(settings)
    marker = tmp_path / "pickle-was-executed"
    good = tmp_path / "good.png"
    good.write_bytes(image_bytes(1))
    labelset_id = load_labelset(labels_file).id
    evil = tmp_path / "evil.png"
    queue = tagging_queue(settings)
    app.send_task(TASK_NAME, queue=queue, serializer="pickle", kwargs={
        "items": [{"uri": str(evil), "key": OpensAFile(marker)}], "model": settings.model,
        "labelset_id": labelset_id})
    # A JSON chunk sent after it: once it is tagged, the pickled one has been seen and handled.
    app.send_task(TASK_NAME, queue=queue, kwargs={
        "items": [{"uri": str(good)}], "model": settings.model, "labelset_id": labelset_id})
    url = tagger_env["DATABASE_URL"]
    wait_until(lambda: str(good) in result_rows(url), 60, message="the JSON chunk was not tagged")

    assert not marker.exists()
    rows = result_rows(url)
    assert set(rows) == {str(good)} and rows[str(good)].status == "done"
    with engine_for(url).connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(deliveries)) == 1
    assert "Refusing to deserialize untrusted content of type pickle" in worker.log()
    assert redis.Redis.from_url(REDIS_URL).llen(queue) == 0  # dropped, not looping


def test_no_credentials_in_task_messages(tagger_env, bucket, monkeypatch):
    secret = f"aws-secret-{uuid.uuid4().hex}"
    password = f"db-pass-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    reset_s3_clients()
    # The test server trusts local connections, so any password connects.
    db_url = sa.make_url(tagger_env["DATABASE_URL"]).set(password=password)
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    boto3.client("s3").put_object(Bucket=bucket, Key="shoes/a.png", Body=image_bytes(2))
    result = invoke("enqueue", "--bucket", bucket)
    assert result.exit_code == 0, result.output
    assert "enqueued 1" in result.output and password not in result.output

    raw = redis.Redis.from_url(REDIS_URL).lrange(tagging_queue(load_settings()), 0, -1)
    assert len(raw) == 1
    envelope = json.loads(raw[0])
    assert envelope["content-type"] == "application/json"
    body = base64.b64decode(envelope["body"])
    compression = envelope["headers"].get("compression")
    body = (kombu.compression.decompress(body, compression) if compression else body).decode()
    assert f"s3://{bucket}/shoes/a.png" in body  # we are looking at the real message
    for text in (raw[0].decode(), body):
        assert secret not in text and password not in text
        assert "AWS_SECRET" not in text and "DATABASE_URL" not in text
    reset_s3_clients()


# --- image bombs in the decode processes ----------------------------------------------------

@pytest.fixture
def decoder_for() -> Iterator:
    made: list[PrepPool] = []

    def make(**values: str) -> PrepPool:
        settings: Settings = load_settings({"TAGGER_DECODE_PROCESSES": "1", **values})
        made.append(prep_pool(settings, "pillow", SPEC, take_turns=False))
        return made[-1]

    yield make
    for pool in made:
        pool.close()


def reasons(pool: PrepPool, *blobs: bytes) -> list[str]:
    answers = {a.index: a.outcome for a in pool.prepare(list(enumerate(blobs)))}
    return [o.reason if isinstance(o, ItemError) else f"{o.shape}"
            for o in (answers[i] for i in range(len(blobs)))]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bombs_are_refused_in_the_decoder_process(decoder_for):
    decoder = decoder_for()
    good = image_bytes(1)
    # 100 MP: over our cap (Pillow's default), under the 179 MP where Pillow itself refuses.
    assert reasons(decoder, png_bomb(10_000, 10_000), good) == ["too-many-pixels",
                                                                "(32, 32, 3)"]
    small = decoder_for(TAGGER_MAX_IMAGE_PIXELS="1000000")
    # Over twice the cap: Pillow's own limit, set to ours in the process, refuses it at open.
    assert reasons(small, png_bomb(1500, 1500), png_bomb(1000, 1000)) == [
        "too-many-pixels", "(32, 32, 3)"]


def test_memory_cap_in_the_decoder_process(decoder_for):
    decoder = decoder_for(TAGGER_MAX_IMAGE_MEMORY=str(32 * 2**20))
    rgb = png_bomb(3000, 3000, bit_depth=8, color_type=2)  # ~100 MiB to decode
    assert reasons(decoder, rgb, image_bytes(2)) == ["too-much-memory", "(32, 32, 3)"]
    roomy = decoder_for(TAGGER_MAX_IMAGE_MEMORY=str(256 * 2**20))
    assert reasons(roomy, rgb) == ["(32, 32, 3)"]


@pytest.mark.timeout(60)
def test_a_runaway_decode_is_stopped_and_its_process_replaced(decoder_for):
    decoder = decoder_for(TAGGER_ITEM_TIMEOUT="1", TAGGER_DECODE_PROCESSES="2")
    bomb = scan_bomb(8192, 1000)  # ~4 s of libjpeg work
    answers = {a.index: a.outcome for a in decoder.prepare([(0, bomb), (1, image_bytes(3))])}
    assert not isinstance(answers[1], ItemError) and answers[1].shape == (32, 32, 3)
    stopped = answers[0]
    assert isinstance(stopped, ItemError) and stopped.reason == "timeout"
    # Ended by the kernel's timer at the item's deadline, not by the pool's patience later on.
    assert "TAGGER_ITEM_TIMEOUT" in str(stopped) and "its process was stopped" in str(stopped)
    assert reasons(decoder, image_bytes(4)) == ["(32, 32, 3)"]  # the pool carries on


@pytest.mark.timeout(120)
def test_a_decode_process_gives_back_the_memory_of_a_large_image(decoder_for):
    pool = decoder_for()
    assert reasons(pool, image_bytes(1)) == ["(32, 32, 3)"]
    ramp = np.linspace(0, 255, 7600, dtype=np.uint8)
    large = save(Image.fromarray(np.ascontiguousarray(np.stack(np.broadcast_arrays(
        ramp[None, :], ramp[:, None], ramp[None, :] // 2 + ramp[:, None] // 2), axis=-1))),
        "PNG", compress_level=1)  # 58 megapixels: ~600 MB while it is decoded
    assert reasons(pool, large) == ["(32, 32, 3)"]
    slot = pool.slots[0]
    wait_until(lambda: slot.process is None or slot.process.proc.poll() is not None
               or psutil.Process(slot.process.proc.pid).memory_info().rss < 150 * 2**20, 60,
               message="the idle decode process kept the large image's memory")


def test_decode_processes_die_with_their_parent(tmp_path: Path):
    # A parent killed without a chance to clean up (SIGKILL of a pool child, of the worker):
    # its decode processes must not go on decoding bombs with no deadline.
    script = (
        "import sys, time\n"
        "from worker.prep.pool import prep_pool\n"
        "from worker.core.pixels import Preprocess\n"
        "from worker.core.settings import load_settings\n"
        "pool = prep_pool(load_settings({'TAGGER_DECODE_PROCESSES': '3', "
        "'TAGGER_ITEM_TIMEOUT': '600'}), 'pillow', Preprocess(32, 32), False)\n"
        f"bomb = open({str(tmp_path / 'bomb.jpg')!r}, 'rb').read()\n"
        "import threading\n"
        "answers = pool.prepare([(i, bomb) for i in range(3)], group_size=1)\n"
        "threading.Thread(target=next, args=(answers,), daemon=True).start()\n"
        "def decoding(s): return s.process is not None and s.process.record.read() is not None\n"
        "while not all(decoding(s) for s in pool.slots): time.sleep(0.1)\n"
        "print(' '.join(str(s.process.proc.pid) for s in pool.slots), flush=True)\n"
        "time.sleep(600)\n")
    (tmp_path / "bomb.jpg").write_bytes(scan_bomb(8192, 4000))  # minutes of decoding
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[2])
    pids = [int(p) for p in wait_until(parent.stdout.readline, 60).split()]
    assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)  # each one decoding
    parent.kill()
    parent.wait(10)
    wait_until(lambda: not any(_alive(p) for p in pids), 60,
               message="decode processes outlived their parent")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
