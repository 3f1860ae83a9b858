"""Operations against the worker as deployed: /metrics over HTTP, JSON logs without secrets,
reserved chunks in `producer status`."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testkit.commands import ROOT, count, producer, run_id
from testkit.faults import ImageServer, Reply
from testkit.images import image_bytes
from testkit.processes import Worker
from testkit.services import RedisServer, free_port, wait_until
from worker.core import metrics
from worker.db.schema import engine_for

REDIS_PASSWORD = "redis-Pa55-f0r-logs"
PG_PASSWORD = "pg-Pa55-f0r-logs"
AWS_SECRET = "aws-S3cr3t-f0r-logs"
# Celery prints this from its signal handler, outside logging; the only plain line it may write.
SHUTDOWN_NOTICE = "worker: Warm shutdown (MainProcess)"


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape a worker's /metrics over HTTP: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def upload(bucket: str, good: int) -> None:
    s3 = boto3.client("s3")
    for i in range(good):
        s3.put_object(Bucket=bucket, Key=f"ops/{i}.png", Body=image_bytes(300 + i))
    s3.put_object(Bucket=bucket, Key="ops/broken.jpg", Body=b"\xff\xd8\xff not a jpeg")


def test_a_taken_metrics_port_costs_the_metrics_not_the_worker(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with caplog.at_level(logging.WARNING, logger="worker.core.metrics"):
            metrics.serve(taken.getsockname()[1])
    assert "metrics not served on port" in caplog.text


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A private redis-server that refuses clients without the password."""
    with RedisServer(tmp_path / "redis", appendonly=False, password=REDIS_PASSWORD) as server:
        yield server.url


def compose_worker_command() -> list[str]:
    """The worker's command in docker-compose.yml (its queue comes from the environment)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    command = list(compose["x-worker"]["command"])
    assert command[0] == "celery" and "--logfile" not in command and "-Q" not in command
    return [sys.executable, "-m", *command]


class DeployedWorker(Worker):
    """The worker as docker-compose.yml runs it: `celery --quiet`, logging to its stderr."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.command = compose_worker_command()


def documented_worker_command() -> list[str]:
    """The worker line of the README's fleet example, as a user copies it."""
    line = next(line.strip() for line in (ROOT / "README.md").read_text().splitlines()
                if line.strip().startswith("celery -A worker worker"))
    return [sys.executable, "-m", *line.partition("#")[0].split()]


def test_the_documented_worker_line_says_when_it_is_ready_and_what_each_chunk_did(
        tagger_env, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(image_bytes(1))
    worker = Worker(tagger_env, tmp_path / "documented.log")
    worker.command = documented_worker_command()  # no --loglevel, no --logfile: its stderr
    assert "--loglevel" not in worker.command
    try:
        worker.start()  # waits for its "... ready" line
        producer("enqueue", "--dir", str(images))
        worker.wait_for(lambda: any(r["message"] == "chunk tagged" for r in worker.records()),
                        60, "no line for the chunk")
    finally:
        worker.kill()


def test_deployed_worker_serves_metrics_and_logs_json_without_secrets(
        tagger_env, bucket, redis_with_password, tmp_path, monkeypatch):
    port = free_port()
    # PostgreSQL here trusts local clients, so a password in the URL is carried but unused.
    pg_url = sa.make_url(tagger_env["DATABASE_URL"]).set(password=PG_PASSWORD)
    env = {**tagger_env, "CELERY_BROKER_URL": redis_with_password,
           "DATABASE_URL": pg_url.render_as_string(hide_password=False),
           "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "TAGGER_METRICS_PORT": str(port),
           # As in the image; the test machine runs as root, the image does not.
           "PYTHONWARNINGS": "ignore:You're running the worker with superuser privileges"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    upload(bucket, good=5)
    worker = DeployedWorker(env, tmp_path / "deployed-worker.log")
    try:
        worker.start()
        out = producer("enqueue", "--bucket", bucket, "--prefix", "ops/")  # one chunk of 6
        wait_until(lambda: count(tagger_env["DATABASE_URL"]) == 6, 60)
        # The write and the counters happen in the same chunk; the scrape may just precede them.
        scraped = wait_until(lambda: (m := samples(port)).get(
            ("tagger_images_total", (("reason", ""), ("status", "done")))) == 5 and m, 10)
    finally:
        worker.stop()  # a warm shutdown: its lines are JSON too

    assert scraped[("tagger_images_total", (("reason", "undecodable"), ("status", "failed")))] == 1
    assert scraped[("tagger_batch_size_sum", ())] == 5  # the broken image never reaches the model
    assert scraped[("tagger_forward_seconds_count", ())] == 2  # batch size 4: 4 + 1
    assert scraped[("tagger_queue_wait_seconds_count", ())] == 1
    stages = {dict(labels)["stage"] for name, labels in scraped
              if name == "tagger_stage_seconds_total"}
    assert {"prepare", "score", "forward", "write", "total"} <= stages
    backend = {dict(labels).get("backend") for name, labels in scraped
               if name == "tagger_backend_info"}
    assert backend == {"torch"}

    lines = [line for line in worker.log().splitlines() if line.strip()]
    for line in lines:
        for secret in (REDIS_PASSWORD, PG_PASSWORD, AWS_SECRET):
            assert secret not in line
    records = [json.loads(line) for line in lines if line != SHUTDOWN_NOTICE]  # all JSON
    assert all({"time", "level", "name", "message"} <= set(r) for r in records)
    chunk = next(r for r in records if r["message"] == "chunk tagged")
    assert chunk["run_id"] == run_id(out) and chunk["chunk_size"] == 6 and chunk["task_id"]
    assert (chunk["done"], chunk["failed"]) == (5, 1)
    assert {"prepare", "score", "forward", "write"} <= set(chunk["timings"])
    # The start-up line names the broker and the database, with their passwords masked.
    assert any("127.0.0.1" in r["message"] and "***" in r["message"] for r in records)


def test_status_counts_reserved_chunks(tagger_env, start_worker, tmp_path):
    catalogue = f"sqlite:///{tmp_path / 'catalogue.db'}"
    held = threading.Event()  # the image is answered once the test has looked
    with ImageServer() as origin:
        origin.routes["/p1.png"] = Reply(image_bytes(7), gate=held)
        with engine_for(catalogue).begin() as conn:
            conn.execute(sa.text("CREATE TABLE products (id TEXT, image_url TEXT)"))
            conn.execute(sa.text("INSERT INTO products VALUES ('p1', :url)"),
                         {"url": origin.url("/p1.png")})
        start_worker({**tagger_env, "TAGGER_ALLOW_PRIVATE_URLS": "1",
                      "TAGGER_FETCH_TIMEOUT": "120", "TAGGER_ITEM_TIMEOUT": "120"})
        producer("enqueue", "--database-url", catalogue, "--table", "products")

        def status() -> dict:
            return json.loads(producer("status", "--json"))

        assert origin.started.wait(30), "the worker never fetched the image"
        try:
            holding = status()  # the origin has not answered: the chunk is in the worker's hands
        finally:
            held.set()
        assert holding["reserved"] == 1 and holding["queue_depth"] == 0, holding
        assert holding["pending"] == 1 and holding["in_flight"] == 1, holding
        wait_until(lambda: count(tagger_env["DATABASE_URL"]) == 1, 30)
        wait_until(lambda: status()["reserved"] == 0, 60,
                   message="the chunk was never acknowledged")
    assert status()["pending"] == 0
