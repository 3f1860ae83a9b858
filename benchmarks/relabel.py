"""Relabel from kept embeddings on PostgreSQL: images/s end to end, each stage, bytes per image.

    python -m benchmarks.relabel --images 1000000 --labels 1000 --workers 2

Creates its own PostgreSQL database, redis-server and a tiny checkpoint whose embeddings are 512
values wide (ViT-B/16's width: what reading, scoring and storing depend on). Writes --images
results of one label set with their kept embeddings as workers write them (random normalised
vectors, 1,000 per transaction), and the same results again under --labelsets - 1 more label
sets (as earlier relabel runs leave them), measures the table and index bytes per kept
embedding, then runs `producer relabel` with the first --labels ImageNet-CN labels against
--workers Celery workers, from the first message to the last range written. Prints images/s, the
workers' wall and CPU seconds per stage (from their report of each range), the CPU of the
PostgreSQL backends meanwhile, each as CPU microseconds per image, and the workers' RSS
sampled through the run, and the peak of the process that scored (memory is flat in the
number of labels: compare --labels).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import sqlalchemy as sa

from producer.relabel import relabel
from testkit.processes import Worker, peak_rss_kib
from testkit.services import RedisServer, postgres_database
from worker.backends.weights import checkpoint_digest
from worker.checkpoint import build
from worker.core.contract import Item, Result
from worker.core.embedding import sha256_of
from worker.core.labels import load_labelset
from worker.core.settings import LABELSETS, load_settings
from worker.db import writes
from worker.db.schema import engine_for, pending_ranges, results
from worker.db.status import result_counts

LABELS = ["台灯", "家具", "桌子", "椅子", "沙发"]
SEED_BATCH = 1000


def seeded(count: int, model: str, weights: str, dim: int) -> Iterator[list[Result]]:
    """Results like a worker's, with the normalised embeddings their labels came from."""
    rng = np.random.default_rng(0)
    for start in range(0, count, SEED_BATCH):
        numbers = range(start, min(count, start + SEED_BATCH))
        vectors = rng.standard_normal((len(numbers), dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield [Result(item=Item(f"s3://products/{n:09d}.jpg", key=str(n), version=f"etag-{n}"),
                      model=model, weights=weights, labelset_id="0123456789abcdef",
                      run_id="seed",
                      content_sha256=sha256_of(str(n).encode()), runtime="torch float32 cpu",
                      labels=[{"label": label, "score": round(0.9 / (i + 1), 6)}
                              for i, label in enumerate(LABELS)], embedding=vector)
               for n, vector in zip(numbers, vectors, strict=True)]


def seed(engine: sa.Engine, count: int, model: Path, dim: int, labelsets: int
         ) -> dict[str, float]:
    started = time.perf_counter()
    weights = checkpoint_digest(model, model.parent / "cache").digest  # what the workers load
    for number, batch in enumerate(seeded(count, str(model), weights, dim)):
        writes.write_results(engine, batch, f"seed-{number}", keep_embeddings=True)
    seconds = time.perf_counter() - started
    names = ", ".join(c.name for c in results.columns if c.name not in {
        "id", "labelset_id", "run_id", "created_at", "updated_at"})
    with engine.begin() as conn:  # the label sets of earlier relabel runs
        for n in range(1, labelsets):
            conn.exec_driver_sql(f"INSERT INTO results ({names}, labelset_id, run_id) SELECT "
                                 f"{names}, '{n:016x}', 'seed-{n}' FROM results "
                                 "WHERE run_id = 'seed'")
    return {"images": count, "rows_per_second": round(count / seconds),
            "label sets": labelsets, "result rows": count * labelsets}


def storage(engine: sa.Engine) -> dict[str, float]:
    """Bytes per kept embedding: the table (with its free-space and visibility maps), its index."""
    with engine.connect() as conn:
        rows, table, total = conn.execute(sa.text(
            "SELECT count(*), pg_table_size('embeddings'), pg_total_relation_size('embeddings') "
            "FROM embeddings")).one()
    return {"rows": rows, "table_bytes_per_image": round(table / rows, 1),
            "index_bytes_per_image": round((total - table) / rows, 1),
            "total_bytes_per_image": round(total / rows, 1)}


def server_cpu(engine: sa.Engine) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to this database."""
    with engine.connect() as conn:
        pids = conn.scalars(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = "
                                    "current_database()")).all()
    used: dict[int, float] = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            used[pid] = times.user + times.system
        except psutil.Error:
            continue
    return used


def microseconds(figures: dict[str, Any]) -> dict[str, float]:
    """CPU microseconds per image relabelled: each worker stage, PostgreSQL, and all of it."""
    images = figures["relabel"]["images"] or 1
    cpu = {stage: figures["stages"][f"{stage} cpu s"] for stage in ("read", "score", "write")}
    cpu["postgres"] = figures["relabel"]["postgres cpu s"]
    per = {name: round(seconds / images * 1e6, 1) for name, seconds in cpu.items()}
    return {**per, "total": round(sum(per.values()), 1)}


def stages(workers: list[Worker]) -> dict[str, Any]:
    """The workers' own reports of each range: images, wall and CPU seconds per stage."""
    reports = [r for w in workers for r in w.records() if r.get("message") == "range relabelled"]
    total: dict[str, Any] = {"ranges": len(reports),
                             "images": sum(int(r["images"]) for r in reports)}  # type: ignore
    for kind in ("wall", "cpu"):
        for stage in ("read", "score", "write"):
            total[f"{stage} {kind} s"] = round(sum(r[kind][stage] for r in reports  # type: ignore
                                                   if kind in r), 2)
    return total


def relabel_run(env: dict[str, str], workers: list[Worker], engine: sa.Engine, labels: Path
                ) -> dict[str, Any]:
    """`producer relabel` to its last range written; the PostgreSQL CPU it took meanwhile (the
    seed's excluded; the wait asks only whether ranges are left: `producer wait`'s counts are
    not the relabel's cost)."""
    settings = load_settings(env)
    for worker in workers:
        worker.sample_rss(0.5)
    before = server_cpu(engine)
    started = time.perf_counter()
    sent = relabel(settings, load_labelset(labels))
    while ranges_left(engine, sent.run_id):
        time.sleep(0.2)
    wall = time.perf_counter() - started
    after = server_cpu(engine)
    used = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    counts = result_counts(engine, sent.run_id)
    return {"run": sent.run_id, "ranges": sent.ranges, "images": counts["done"],
            "postgres cpu s": round(used, 2),
            "failed": counts["failed"], "seconds": round(wall, 2),
            "images_per_second": round(counts["done"] / wall),
            "worker_rss_mib": [rss(w.rss_samples) for w in workers],
            # VmHWM of the process that scored: the peak no sample can miss (start-up included)
            "worker_peak_rss_mib": [round(peak_rss_kib(w.model_pid()) / 1024) for w in workers]}


def ranges_left(engine: sa.Engine, run_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(pending_ranges)
                               .where(pending_ranges.c.run_id == run_id)) or 0)


def rss(samples: list[float]) -> dict[str, int]:
    """A worker's RSS through the run: flat means the end is where a tenth of the way was."""
    if not samples:
        return {}
    return {"at 10 %": round(samples[len(samples) // 10]),
            "at 50 %": round(samples[len(samples) // 2]), "at the end": round(samples[-1]),
            "max": round(max(samples))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="Celery workers, -c 1 each")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads per worker")
    parser.add_argument("--labelsets", type=int, default=1,
                        help="label sets each image already has results of")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-relabel-") as tmp:
        work = Path(tmp)
        texts = [p.read_text(encoding="utf-8") for p in LABELSETS.glob("*.txt")]
        model = build(work / "model", texts, tiny=True, projection_dim=512)
        names = [line for line in (LABELSETS / "imagenet_zh.txt").read_text("utf-8").splitlines()
                 if line and not line.startswith("#")][:args.labels]
        names += [f"类别{n}" for n in range(args.labels - len(names))]  # past ImageNet's 1,000
        labels = work / "labels.txt"
        labels.write_text("\n".join(names) + "\n", encoding="utf-8")
        with postgres_database(prefix="bench_relabel") as url, \
                RedisServer(work / "redis", appendonly=False) as redis:
            env = {"CELERY_BROKER_URL": redis.url, "DATABASE_URL": url,
                   "TAGGER_MODEL": str(model), "TAGGER_BACKEND": "torch",
                   "TAGGER_PRECISION": "float32", "TAGGER_DEVICE": "cpu",
                   "TAGGER_HOME": str(work / "home"), "TAGGER_QUEUE": "bench-relabel",
                   "TAGGER_CACHE_DIR": str(work / "cache"),
                   "TAGGER_DECODE_PROCESSES": "1", "TAGGER_VISIBILITY_TIMEOUT": "600"}
            engine = engine_for(url)
            figures["seed"] = seed(engine, args.images, model, 512, args.labelsets)
            print(f"seeded: {figures['seed']}", flush=True)
            figures["storage"] = storage(engine)
            print(f"storage: {figures['storage']}", flush=True)
            workers = [Worker(env, work / f"worker-{i}.log", threads=args.threads).start()
                       for i in range(args.workers)]
            try:
                figures["relabel"] = relabel_run(env, workers, engine, labels)
                figures["stages"] = stages(workers)
                figures["cpu us per image"] = microseconds(figures)
            finally:
                for worker in workers:
                    worker.kill()
            engine.dispose()
    for name in ("relabel", "stages", "cpu us per image"):
        print(f"{name}: {figures[name]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
