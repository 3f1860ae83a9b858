"""Guards against hostile input: pickled messages, credentials in messages, image bombs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

import kombu.compression
import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from producer.cli import main
from tests.conftest import REDIS_URL
from tests.helpers import ROOT, image_bytes, wait_until
from tests.test_decode import png_bomb
from worker.app import create_app
from worker.settings import TASK_NAME, load_settings
from worker.store import deliveries, engine_for, results


class OpensAFile:
    """Unpickling this creates a file: proof that a pickled message was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return open, (str(self.path), "w")


def result_uris(url: str) -> set[str]:
    with engine_for(url).connect() as conn:
        return set(conn.scalars(sa.select(results.c.uri)))


@pytest.mark.timeout(180)
def test_pickled_message_is_refused(tagger_env, start_worker, tmp_path, labels_file):
    worker = start_worker(tagger_env)
    settings = load_settings()
    app = create_app(settings)
    marker = tmp_path / "pickle-was-executed"
    good = tmp_path / "good.png"
    good.write_bytes(image_bytes(1))
    labelset_id = _labelset_id(labels_file)
    evil = tmp_path / "evil.png"
    app.send_task(TASK_NAME, queue=settings.queue, serializer="pickle", kwargs={
        "items": [{"uri": str(evil), "key": OpensAFile(marker)}], "labelset_id": labelset_id})
    # A JSON chunk sent after it: once it is tagged, the pickled one has been seen and handled.
    app.send_task(TASK_NAME, queue=settings.queue, kwargs={
        "items": [{"uri": str(good)}], "labelset_id": labelset_id})
    url = tagger_env["DATABASE_URL"]
    wait_until(lambda: str(good) in result_uris(url), 60, message="the JSON chunk was not tagged")

    assert not marker.exists()
    assert result_uris(url) == {str(good)}
    with engine_for(url).connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(deliveries)) == 1
    assert "Refusing to deserialize untrusted content of type pickle" in worker.log()
    assert redis.Redis.from_url(REDIS_URL).llen(settings.queue) == 0  # dropped, not looping


def _labelset_id(labels_file: Path) -> str:
    from worker.labels import load_labelset

    return load_labelset(labels_file).id


def test_no_credentials_in_task_messages(tagger_env, bucket, monkeypatch, s3_endpoint):
    secret = f"aws-secret-{uuid.uuid4().hex}"
    password = f"db-pass-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    # The test server trusts local connections, so any password connects.
    db_url = sa.make_url(tagger_env["DATABASE_URL"]).set(password=password)
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    import boto3

    boto3.client("s3").put_object(Bucket=bucket, Key="shoes/a.png", Body=image_bytes(2))
    result = CliRunner().invoke(main, ["enqueue", "--bucket", bucket], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "enqueued 1" in result.output

    raw = redis.Redis.from_url(REDIS_URL).lrange(tagger_env["TAGGER_QUEUE"], 0, -1)
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


def test_pillow_bomb_warning_is_an_error_in_the_worker_process():
    # pytest resets warning filters per test, so check the import-time guard in a fresh
    # interpreter, with our own pixel cap set high: Pillow's limit must still refuse the bomb.
    code = (
        "import sys; from worker.decode import decode, Preprocess; "
        "from worker.errors import ItemError\n"
        "try:\n"
        "    decode(sys.stdin.buffer.read(), Preprocess(32, 32), max_pixels=10**12)\n"
        "except ItemError as e:\n"
        "    print(e.reason)\n")
    out = subprocess.run([sys.executable, "-c", code], input=png_bomb(10_000, 10_000), cwd=ROOT,
                         capture_output=True, check=True, timeout=60)
    assert out.stdout.decode().strip() == "too-many-pixels", out.stderr.decode()[-2000:]
