"""The whole pipeline as deployed: storage -> producer -> broker -> one Celery worker -> DB.

``services``: files in S3 (moto's server) -> `producer enqueue --bucket` -> Redis -> worker ->
PostgreSQL. ``redis``: files in a folder -> `producer enqueue --dir` -> Redis -> worker -> SQLite.
``embedded``: the same over kombu's filesystem broker (the product's no-services default).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from testkit.corpus import Image
from testkit.processes import Worker, peak_rss_kib
from testkit.services import postgres_database, s3_client, s3_server
from worker.db import migrate
from worker.db.schema import engine_for, results, runs

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Services:
    """Where the worker and the producer find storage, broker and database."""

    env: dict[str, str]
    database_url: str
    bucket: str | None = None  # None: a local folder
    folder: Path | None = None


@dataclass
class PipelineResult:
    images: int
    seconds: float
    rate: float
    failed: int
    model_busy: float  # share of the run the worker spent in forward passes
    chunks: int


def memory(worker: Worker) -> dict[str, Any]:
    """The model process's RSS: after warm-up, at the end, the most, a series; in MiB."""
    samples = worker.rss_samples
    peak = 0.0
    with contextlib.suppress(OSError, LookupError):
        peak = peak_rss_kib(worker.model_pid()) / 1024
    return {"after_warm_up_mib": round(samples[0] if samples else 0.0, 1),
            "end_mib": round(samples[-1] if samples else 0.0, 1),
            "max_after_warm_up_mib": round(max(samples, default=0.0), 1),
            "lifetime_peak_mib": round(peak, 1),
            "series_mib": [round(x) for x in samples[:: max(1, len(samples) // 12)]]}


@contextlib.contextmanager
def services(mode: str, workdir: Path, *, redis_url: str, postgres_url: str) -> Iterator[Services]:
    """Start what ``mode`` needs (moto's S3 server, a database) and describe it."""
    home = workdir / "home"
    base = {"TAGGER_HOME": str(home), "TAGGER_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
            "TAGGER_CACHE_DIR": str(workdir.parent / "cache")}
    if mode in ("embedded", "redis"):
        url = f"sqlite:///{home / 'results.db'}"
        home.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(url, create=True)
        broker = redis_url if mode == "redis" else ""
        yield Services({**base, "CELERY_BROKER_URL": broker, "DATABASE_URL": url}, url,
                       folder=workdir / "images")
        return
    with s3_server() as aws, postgres_database(postgres_url, prefix="tagger_bench") as url:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3_client(aws).create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        yield Services({**base, **aws, "CELERY_BROKER_URL": redis_url, "DATABASE_URL": url},
                       url, bucket=bucket)


def upload(svc: Services, prefix: str, images: Sequence[Image]) -> None:
    """Put the images where the producer will list them (not part of the timed window)."""
    if svc.folder is not None:
        folder = svc.folder / prefix
        folder.mkdir(parents=True, exist_ok=True)
        for image in images:
            (folder / image.name).write_bytes(image.data)
        return
    s3 = s3_client(svc.env)
    for image in images:
        s3.put_object(Bucket=svc.bucket, Key=f"{prefix}/{image.name}",  # type: ignore
                      Body=image.data)


def chunk_timings(worker: Worker, run_id: str) -> list[dict[str, Any]]:
    """The `chunk tagged` log records of one run."""
    return [r for r in worker.records()
            if r.get("message") == "chunk tagged" and r.get("run_id") == run_id]


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


def run(svc: Services, worker: Worker, prefix: str, count: int, timeout: float
        ) -> PipelineResult:
    """Enqueue ``prefix`` and wait for every row: from the run's first enqueue to the last row."""
    engine = engine_for(svc.database_url)
    producer = threading.Thread(target=enqueue, args=(svc, prefix))
    producer.start()
    run_id = _wait_for_run(engine, svc, prefix, timeout)
    counted = sa.select(sa.func.count()).select_from(results).where(results.c.run_id == run_id)
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while (written := conn.execute(counted).scalar_one()) < count:
            conn.commit()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{written}/{count} rows after {timeout}s")
            time.sleep(0.05)
        ended = time.time()
        started = conn.execute(sa.select(runs.c.started_at).where(runs.c.id == run_id)
                               ).scalar_one()
        failed = conn.execute(counted.where(results.c.status == "failed")).scalar_one()
    producer.join()
    engine.dispose()
    seconds = ended - (started if started.tzinfo else started.replace(tzinfo=UTC)).timestamp()
    chunks = chunk_timings(worker, run_id)
    forward = sum(c.get("timings", {}).get("forward", 0.0) for c in chunks)
    return PipelineResult(count, seconds, count / seconds, failed,
                          forward / seconds if seconds else 0.0, len(chunks))


def _wait_for_run(engine: sa.Engine, svc: Services, prefix: str, timeout: float) -> str:
    source = (str((svc.folder / prefix).absolute()) if svc.folder is not None
              else f"s3://{svc.bucket}/{prefix}/")
    query = sa.select(runs.c.id).where(runs.c.source == source)
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while (run_id := conn.execute(query).scalar()) is None:
            conn.commit()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no run for {source} after {timeout}s")
            time.sleep(0.02)
    return str(run_id)


