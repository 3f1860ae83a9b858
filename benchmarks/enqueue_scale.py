"""Enqueue a large PostgreSQL catalogue table: producer rows/s, peak memory, Redis memory used.

    python -m benchmarks.enqueue_scale --rows 1000000

Creates its own PostgreSQL database (catalogue table + results schema) and its own redis-server
on a free loopback port, runs ``producer enqueue --table`` as a subprocess, then a second
(nightly re-run) enqueue of the same table, and removes everything it created.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import sqlalchemy as sa

from testkit.processes import peak_rss_kib
from testkit.services import PG_ADMIN_URL, RedisServer, postgres_database
from worker.core.celeryconf import tagging_queue
from worker.core.labels import load_labelset
from worker.core.settings import DEFAULT_LABELS, DEFAULT_MODEL, load_settings
from worker.db.schema import normalise_url

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "bench-enqueue"


@dataclass
class Measured:
    """One producer run: wall time, peak RSS and RSS samples over time."""

    seconds: float
    peak_rss_mb: float
    samples_mb: list[float] = field(default_factory=list)
    output: str = ""


def fill_catalogue(url: str, rows: int) -> None:
    """A products table like a shop's: id, image URL on S3, updated_at."""
    engine = sa.create_engine(normalise_url(url))
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE public.products (id bigint PRIMARY KEY, title text, "
            "image_url text, updated_at timestamptz NOT NULL)"))
        conn.execute(sa.text(
            "INSERT INTO public.products SELECT g, 'product ' || g, "
            "'s3://catalog-images/products/' || lpad(g::text, 9, '0') || '.jpg', "
            "timestamptz '2026-11-01 00:00:00+00' + g * interval '1 second' "
            "FROM generate_series(1, :rows) AS g"), {"rows": rows})
        conn.execute(sa.text("ANALYZE public.products"))
    engine.dispose()


def answer_everything(url: str) -> None:
    """Store a done result for every product, as the workers would, and clear the marks."""
    labelset = load_labelset(DEFAULT_LABELS)
    engine = sa.create_engine(normalise_url(url))
    with engine.begin() as conn:
        conn.execute(sa.text("SET TIME ZONE 'UTC'"))
        # The version text is what the producer reads back: str() of an aware UTC datetime.
        conn.execute(sa.text(
            "INSERT INTO results (uri, uri_hash, model, labelset_id, item_key, source_version, "
            "status, labels) SELECT image_url, encode(sha256(convert_to(image_url, 'UTF8')), "
            "'hex'), :model, :labelset, id::text, "
            "to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS') || '+00:00', 'done', '[]' "
            "FROM public.products"), {"model": DEFAULT_MODEL, "labelset": labelset.id})
        conn.execute(sa.text("DELETE FROM pending"))
        conn.execute(sa.text("ANALYZE results"))
    engine.dispose()


def run_producer(env: dict[str, str], catalogue_url: str) -> Measured:
    """Time one ``producer enqueue --table`` and sample its resident memory."""
    args = [str(Path(sys.executable).parent / "producer"), "enqueue",
            "--database-url", catalogue_url, "--table", "public.products",
            "--key-column", "id", "--url-column", "image_url", "--version-column", "updated_at"]
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout or ()), daemon=True)
    reader.start()
    samples: list[float] = []
    while True:
        # wait4 reaps the child and hands back its rusage: ru_maxrss is its peak RSS in KiB.
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        with contextlib.suppress(OSError, LookupError):  # it may just have ended
            samples.append(peak_rss_kib(proc.pid) / 1024)
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5)
    if proc.returncode:
        raise RuntimeError("producer failed:\n" + "".join(output))
    samples = [s for s in samples if s]
    return Measured(seconds, usage.ru_maxrss / 1024, samples, "".join(output).strip())


def report(name: str, rows: int, measured: Measured) -> None:
    marks = [measured.samples_mb[int(len(measured.samples_mb) * f)]
             for f in (0.1, 0.5, 0.9)] if len(measured.samples_mb) > 3 else []
    print(f"{name}: {rows:,} rows in {measured.seconds:.1f} s = {rows / measured.seconds:,.0f} "
          f"rows/s; peak RSS {measured.peak_rss_mb:.0f} MB"
          + (f" (VmHWM at 10/50/90 %: {', '.join(f'{m:.0f}' for m in marks)} MB)"
             if marks else ""))
    print(f"  producer said: {measured.output.splitlines()[-1] if measured.output else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--postgres", default=PG_ADMIN_URL,
                        help="admin URL; a new database is created next to it")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    with postgres_database(options.postgres, prefix="tagger_bench") as db_url, \
            RedisServer(folder, appendonly=False) as server:
        broker = server.url
        started = time.perf_counter()
        fill_catalogue(db_url, options.rows)
        print(f"catalogue of {options.rows:,} rows written in "
              f"{time.perf_counter() - started:.1f} s")
        client = redis.Redis.from_url(broker)
        before = int(client.info("memory")["used_memory"])
        env = {**os.environ, "CELERY_BROKER_URL": broker, "DATABASE_URL": db_url,
               "TAGGER_QUEUE": QUEUE, "TAGGER_CHUNK_SIZE": str(options.chunk_size),
               "TAGGER_HOME": tempfile.mkdtemp(prefix="bench-home-")}
        queue = tagging_queue(load_settings(env))  # the model's queue, as the producer names it
        first = run_producer(env, db_url)
        report("first run (all due)", options.rows, first)
        after = int(client.info("memory")["used_memory"])
        messages = int(client.llen(queue))
        print(f"  redis: {messages:,} messages, used_memory +{(after - before) / 2**20:.1f} MB "
              f"({(after - before) / max(1, messages):,.0f} B/message, "
              f"{(after - before) / options.rows:,.0f} B/image)")
        second = run_producer(env, db_url)
        report("second run (all in flight, nothing sent)", options.rows, second)
        print(f"  redis: {int(client.llen(queue)):,} messages after the second run")
        answer_everything(db_url)
        third = run_producer(env, db_url)
        report("third run (every image tagged at its version: the nightly case)", options.rows,
               third)
        shutil.rmtree(env["TAGGER_HOME"], ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
          "(shared with other developers' tests: figures are noisy)")


if __name__ == "__main__":
    main()
