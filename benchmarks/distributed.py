"""The whole pipeline as deployed: storage -> producer -> broker -> one Celery worker -> DB.

``services``: files in S3 (moto's server) -> `producer enqueue --bucket` -> Redis -> worker ->
PostgreSQL. ``redis``: files in a folder -> `producer enqueue --dir` -> Redis -> worker -> SQLite.
``embedded``: the same over kombu's filesystem broker (the product's no-services default).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

from benchmarks.corpus import Image
from worker import store

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Services:
    """Where the worker and the producer find storage, broker and database."""

    env: dict[str, str]
    database_url: str
    bucket: str | None = None  # None: a local folder (embedded mode)
    folder: Path | None = None


@dataclass
class PipelineResult:
    images: int
    seconds: float
    rate: float
    failed: int
    model_busy: float  # share of the run the worker spent in forward passes
    chunks: int


@dataclass
class Memory:
    """Resident memory of the worker child that holds the model, in MiB."""

    after_warm_up: float = 0.0
    samples: list[float] = field(default_factory=list)
    lifetime_peak: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"after_warm_up_mib": round(self.after_warm_up, 1),
                "end_mib": round(self.samples[-1] if self.samples else 0.0, 1),
                "max_after_warm_up_mib": round(max(self.samples, default=0.0), 1),
                "lifetime_peak_mib": round(self.lifetime_peak, 1),
                "series_mib": [round(x) for x in self.samples[:: max(1, len(self.samples) // 12)]]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def migrate(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, dropped afterwards."""
    name = f"tagger_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(store.normalise_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(admin_url).set(database=name).render_as_string(False)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def services(mode: str, workdir: Path, *, redis_url: str, postgres_url: str) -> Iterator[Services]:
    """Start what ``mode`` needs (moto's S3 server, a database) and describe it."""
    home = workdir / "home"
    base = {"TAGGER_HOME": str(home), "TAGGER_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if mode in ("embedded", "redis"):
        url = f"sqlite:///{home / 'results.db'}"
        home.mkdir(parents=True, exist_ok=True)
        migrate(url)
        broker = redis_url if mode == "redis" else ""
        yield Services({**base, "CELERY_BROKER_URL": broker, "DATABASE_URL": url}, url,
                       folder=workdir / "images")
        return
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    aws = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        with postgres_database(postgres_url) as url:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL_S3"], aws_access_key_id="bench",
                         aws_secret_access_key="bench", region_name="us-east-1"
                         ).create_bucket(Bucket=bucket)
            yield Services({**base, **aws, "CELERY_BROKER_URL": redis_url, "DATABASE_URL": url},
                           url, bucket=bucket)
    finally:
        server.stop()


def upload(svc: Services, prefix: str, images: Sequence[Image]) -> None:
    """Put the images where the producer will list them (not part of the timed window)."""
    if svc.folder is not None:
        folder = svc.folder / prefix
        folder.mkdir(parents=True, exist_ok=True)
        for image in images:
            (folder / image.name).write_bytes(image.data)
        return
    import boto3

    s3 = boto3.client("s3", endpoint_url=svc.env["AWS_ENDPOINT_URL_S3"],
                      aws_access_key_id="bench", aws_secret_access_key="bench",
                      region_name="us-east-1")
    for image in images:
        s3.put_object(Bucket=svc.bucket, Key=f"{prefix}/{image.name}", Body=image.data)


class Worker:
    """One real `celery -A worker worker -P prefork -c 1` process, and its model child's RSS."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.memory = Memory()
        self._child: psutil.Process | None = None
        self._stop = threading.Event()
        self._sampling = False

    def start(self, timeout: float = 900) -> Worker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "prefork",
                 "-c", "1", "--loglevel", "INFO", "-Q", self.env["TAGGER_QUEUE"],
                 "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
                 "--without-mingle", "--without-heartbeat"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while "decode threads" not in self.log() or " ready" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        children = psutil.Process(self.proc.pid).children()
        self._child = children[0] if children else psutil.Process(self.proc.pid)
        self.memory.after_warm_up = self._rss()
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def chunk_timings(self, run_id: str) -> list[dict[str, Any]]:
        """The `chunk tagged` log records of one run (JSON lines)."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{") and "chunk tagged" in line and run_id in line:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def _rss(self) -> float:
        assert self._child is not None
        return self._child.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(psutil.Error):
                self.memory.samples.append(self._rss())

    def stop(self) -> None:
        self._stop.set()
        if self._child is not None:
            with contextlib.suppress(psutil.Error, FileNotFoundError, ValueError):
                status = Path(f"/proc/{self._child.pid}/status").read_text()
                peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
                self.memory.lifetime_peak = int(peak.split()[1]) / 1024
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


def enqueue(svc: Services, prefix: str) -> str:
    """Run `producer enqueue` as users do; returns its output."""
    source = (["--dir", str(svc.folder / prefix)] if svc.folder is not None
              else ["--bucket", str(svc.bucket), "--prefix", f"{prefix}/"])
    done = subprocess.run(
        [sys.executable, "-c", "from producer.cli import main; main()", "enqueue", *source],
        cwd=ROOT, env={**os.environ, **svc.env}, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"producer enqueue failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def run(svc: Services, worker: Worker, prefix: str, count: int, timeout: float) -> PipelineResult:
    """Enqueue ``prefix`` and wait for every row: from the run's first enqueue to the last row."""
    engine = store.engine_for(svc.database_url)
    output: list[str] = []
    producer = threading.Thread(target=lambda: output.append(enqueue(svc, prefix)))
    producer.start()
    run_id = _wait_for_run(engine, svc, prefix, timeout)
    counted = sa.select(sa.func.count()).select_from(store.results).where(
        store.results.c.run_id == run_id)
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while (written := conn.execute(counted).scalar_one()) < count:
            conn.commit()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{written}/{count} rows after {timeout}s")
            time.sleep(0.05)
        ended = time.time()
        started = conn.execute(sa.select(store.runs.c.started_at).where(
            store.runs.c.id == run_id)).scalar_one()
        failed = conn.execute(counted.where(store.results.c.status == "failed")).scalar_one()
    producer.join()
    engine.dispose()
    started_s = (started if started.tzinfo else started.replace(tzinfo=UTC)).timestamp()
    seconds = ended - started_s
    chunks = worker.chunk_timings(run_id)
    forward = sum(c.get("timings", {}).get("forward", 0.0) for c in chunks)
    return PipelineResult(count, seconds, count / seconds, failed,
                          forward / seconds if seconds else 0.0, len(chunks))


def _wait_for_run(engine: sa.Engine, svc: Services, prefix: str, timeout: float) -> str:
    source = (str((svc.folder / prefix).absolute()) if svc.folder is not None
              else f"s3://{svc.bucket}/{prefix}/")
    query = sa.select(store.runs.c.id).where(store.runs.c.source == source)
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while (run_id := conn.execute(query).scalar()) is None:
            conn.commit()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no run for {source} after {timeout}s")
            time.sleep(0.02)
    return run_id
