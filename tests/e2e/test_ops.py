"""Operations against real processes: /metrics over HTTP, JSON logs without secrets, reserved."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, worker_env
from tests.helpers import ROOT, WorkerProcess, image_bytes, producer, wait_until
from worker import metrics
from worker.store import engine_for, results

REDIS_PASSWORD = "redis-Pa55-f0r-logs"
PG_PASSWORD = "pg-Pa55-f0r-logs"
AWS_SECRET = "aws-S3cr3t-f0r-logs"
# Celery prints this from its signal handler, outside logging; the only plain line it writes.
SHUTDOWN_NOTICE = "worker: Warm shutdown (MainProcess)"


def result_count(url: str) -> int:
    with engine_for(url).connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(results))


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


def test_worker_serves_metrics(tagger_env, bucket, start_worker):
    port = free_port()
    upload(bucket, good=5)
    start_worker({**tagger_env, "TAGGER_METRICS_PORT": str(port)})
    producer("enqueue", "--bucket", bucket, "--prefix", "ops/")  # 6 images: one chunk of 6
    wait_until(lambda: result_count(tagger_env["DATABASE_URL"]) == 6, 60)

    # The write and the counters happen in the same chunk; the scrape may just precede them.
    scraped = wait_until(lambda: (m := samples(port)).get(
        ("tagger_images_total", (("reason", ""), ("status", "done")))) == 5 and m, 10)
    assert scraped[("tagger_images_total", (("reason", "undecodable"), ("status", "failed")))] == 1
    assert scraped[("tagger_batch_size_sum", ())] == 5  # the broken image never reaches the model
    assert scraped[("tagger_forward_seconds_count", ())] == 2  # batch size 4: 4 + 1
    assert scraped[("tagger_queue_wait_seconds_count", ())] == 1
    stages = {dict(labels)["stage"] for name, labels in scraped
              if name == "tagger_stage_seconds_total"}
    assert {"wait", "forward", "write", "total"} <= stages


def test_a_taken_metrics_port_costs_the_metrics_not_the_worker(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with caplog.at_level(logging.WARNING, logger="worker.metrics"):
            metrics.serve(taken.getsockname()[1])
    assert "metrics not served on port" in caplog.text


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A private redis-server that refuses clients without the password."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", REDIS_PASSWORD, "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        ping = subprocess.run(["redis-cli", "-p", str(port), "--no-auth-warning", "-a",
                               REDIS_PASSWORD, "ping"], capture_output=True, text=True)
        return ping.stdout.strip() == "PONG"

    wait_until(answers, 10, message="redis-server did not start")
    yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


class DeployedWorker(WorkerProcess):
    """The worker as docker-compose.yml runs it: `celery --quiet` (no banner), no progress bar."""

    def start(self, ready_timeout: float = 120) -> DeployedWorker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "--quiet", "-A", "worker", "worker",
                 "-P", "prefork", "-c", "1", "--loglevel", "INFO", "-Q", self.env["TAGGER_QUEUE"],
                 "-n", f"ops-{os.getpid()}-{time.monotonic_ns()}@%h"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.wait_for_log("label set", ready_timeout)
        return self


def test_logs_are_json_lines_without_secrets(tagger_env, bucket, redis_with_password, tmp_path,
                                             monkeypatch):
    # PostgreSQL here trusts local clients, so a password in the URL is carried but unused.
    pg_url = sa.make_url(tagger_env["DATABASE_URL"]).set(password=PG_PASSWORD)
    env = {**tagger_env, "CELERY_BROKER_URL": redis_with_password,
           "DATABASE_URL": pg_url.render_as_string(hide_password=False),
           "AWS_SECRET_ACCESS_KEY": AWS_SECRET}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    upload(bucket, good=3)
    # As in the image (Dockerfile ENV); the test machine runs as root, the image does not.
    process_env = {**worker_env(env), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                   "PYTHONWARNINGS": "ignore:You're running the worker with superuser privileges"}
    worker = DeployedWorker(process_env, tmp_path / "deployed-worker.log")
    try:
        worker.start()
        out = producer("enqueue", "--bucket", bucket, "--prefix", "ops/")
        run_id = out.split()[1].rstrip(":")
        wait_until(lambda: "chunk tagged" in worker.log(), 60, message="no chunk was tagged")
    finally:
        worker.stop()

    lines = [line for line in worker.log().splitlines() if line.strip()]
    for line in lines:
        for secret in (REDIS_PASSWORD, PG_PASSWORD, AWS_SECRET):
            assert secret not in line
    records = [json.loads(line) for line in lines if line != SHUTDOWN_NOTICE]  # all JSON
    assert all({"time", "level", "name", "message"} <= set(r) for r in records)
    chunk = next(r for r in records if r["message"] == "chunk tagged")
    assert chunk["run_id"] == run_id and chunk["chunk_size"] == 4 and chunk["task_id"]
    assert (chunk["done"], chunk["failed"]) == (3, 1)
    assert {"wait", "forward", "write"} <= set(chunk["timings"])
    # The start-up line names the broker and the database, with their passwords masked.
    assert any("127.0.0.1" in r["message"] and "***" in r["message"] for r in records)


class SlowImages(BaseHTTPRequestHandler):
    """Serves one PNG, but only once the test lets it go: a chunk that takes its time."""

    release = threading.Event()
    body = image_bytes(7)

    def do_GET(self) -> None:
        self.release.wait(60)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_: object) -> None:
        pass


def test_status_counts_reserved_chunks(tagger_env, start_worker, tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowImages)
    SlowImages.release.clear()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    catalogue = f"sqlite:///{tmp_path / 'catalogue.db'}"
    with engine_for(catalogue).begin() as conn:
        conn.execute(sa.text("CREATE TABLE products (id TEXT, image_url TEXT)"))
        conn.execute(sa.text("INSERT INTO products VALUES ('p1', :url)"),
                     {"url": f"http://127.0.0.1:{server.server_port}/p1.png"})
    start_worker({**tagger_env, "TAGGER_ALLOW_PRIVATE_URLS": "1"})
    try:
        producer("enqueue", "--database-url", catalogue, "--table", "products")

        def status() -> dict:
            return json.loads(producer("status", "--json"))

        held = wait_until(lambda: (s := status())["reserved"] >= 1 and s, 30,
                          message="the worker's chunk never showed as reserved")
        assert held["queue_depth"] == 0 and held["pending"] == 1
    finally:
        SlowImages.release.set()
    wait_until(lambda: result_count(tagger_env["DATABASE_URL"]) == 1, 30)
    wait_until(lambda: status()["reserved"] == 0, 10, message="the chunk was never acknowledged")
    server.shutdown()
