"""The whole flow against real services: S3 (moto server) -> producer -> Redis -> worker -> DB."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa

from testkit.commands import count, producer, rows
from testkit.images import image_bytes
from testkit.models import TEST_LABELS, direct_scores
from testkit.services import wait_until
from worker.db import migrate
from worker.db.schema import engine_for

IMAGES = 30


def test_bucket_to_postgres(tagger_env, bucket, start_worker, tiny_model):
    s3 = boto3.client("s3")
    good = {f"shoes/{i:03d}.png": image_bytes(i) for i in range(IMAGES)}
    for key, data in good.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    s3.put_object(Bucket=bucket, Key="shoes/broken.jpg", Body=b"\xff\xd8\xff\xe0 not a jpeg")
    s3.put_object(Bucket=bucket, Key="shoes/readme.txt", Body=b"not an image key")
    start_worker(tagger_env)

    out = producer("enqueue", "--bucket", bucket, "--prefix", "shoes/")
    assert f"listed {IMAGES + 2}, enqueued {IMAGES + 1}" in out
    url = tagger_env["DATABASE_URL"]
    wait_until(lambda: count(url) == IMAGES + 1, 120, message="results not all written")

    by_uri = rows(url)
    broken = by_uri.pop(f"s3://{bucket}/shoes/broken.jpg")
    assert (broken.status, broken.reason, broken.labels) == ("failed", "undecodable", [])
    expected = direct_scores(tiny_model, TEST_LABELS, list(good.values()))
    for (key, _), truth in zip(good.items(), expected, strict=True):
        row = by_uri[f"s3://{bucket}/{key}"]
        assert row.status == "done" and row.error is None
        assert len(row.labels) == 5
        assert [x["score"] for x in row.labels] == sorted((x["score"] for x in row.labels),
                                                          reverse=True)
        for entry in row.labels:
            assert abs(entry["score"] - truth[entry["label"]]) < 1e-4
        assert row.labels[0]["label"] == max(truth, key=truth.get)
        assert row.content_sha256 and row.source_version
        assert row.runtime == "torch float32 cpu"

    # The same bucket again: nothing is due, nothing is sent, no row is added.
    out = producer("enqueue", "--bucket", bucket, "--prefix", "shoes/")
    assert "enqueued 0" in out
    assert count(url) == IMAGES + 1

    status = json.loads(producer("status", "--json"))
    assert (status["done"], status["failed"], status["pending"]) == (IMAGES, 1, 0)
    assert status["queue_depth"] == 0
    exported = [json.loads(line) for line in producer("export").splitlines()]
    assert len(exported) == IMAGES + 1
    assert {"uri", "status", "labels", "error", "model", "content_sha256"} <= set(exported[0])


def test_embedded_default(tmp_path: Path, tiny_model, labels_file, start_worker, monkeypatch):
    """No broker or database configured: filesystem broker and SQLite under TAGGER_HOME."""
    for name in ("CELERY_BROKER_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    env = {"TAGGER_HOME": str(home), "TAGGER_MODEL": str(tiny_model),
           "TAGGER_LABELS": str(labels_file), "TAGGER_BACKEND": "torch",
           "TAGGER_PRECISION": "float32", "TAGGER_QUEUE": "tagger",
           "TAGGER_DECODE_PROCESSES": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    url = f"sqlite:///{home / 'results.db'}"
    migrate.upgrade(url, create=True)
    images = tmp_path / "images" / "sub"
    images.mkdir(parents=True)
    good = [image_bytes(100 + i, fmt="JPEG") for i in range(6)]
    for i, data in enumerate(good):
        (images / f"{i}.jpg").write_bytes(data)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    worker = start_worker(env)
    assert "filesystem://" in worker.log() and "results.db" in worker.log()

    out = producer("enqueue", "--dir", str(tmp_path / "images"))
    assert "enqueued 7" in out
    wait_until(lambda: count(url) == 7, 120, message="results not all written")
    statuses = {Path(uri).name: r.status for uri, r in rows(url).items()}
    assert statuses.pop("corrupt.png") == "failed"
    assert set(statuses.values()) == {"done"}
    assert "enqueued 0" in producer("enqueue", "--dir", str(tmp_path / "images"))
    assert count(url) == 7


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_migrations_round_trip(dialect, tmp_path, empty_pg_url):
    url = empty_pg_url if dialect == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url, create=True)
    assert "results" in sa.inspect(engine_for(url)).get_table_names()
    migrate.downgrade(url, "base")
    assert set(sa.inspect(engine_for(url)).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(url)
    assert migrate.revisions(url)[0] == migrate.revisions(url)[1]
