"""What a GPU host can be fed: CPU-ms per image of each worker process, not wall time.

    python -m benchmarks.feed --images 500 --source s3 --source folder

A tiny random model (its forward pass is nearly free, so what is left is the pipeline), one
worker (`celery -A worker worker -P prefork -c 1`), the images in S3 (moto's server, over HTTP)
or a folder, Redis, PostgreSQL. After the worker is warm, the CPU time (user + system, psutil)
of each of its processes is read before and after a run of ``--images`` distinct 1,200 px JPEGs:
the model's process (every image passes through it), its decode processes (those that ended
are counted through their parent), the Celery main process. Each figure is divided by the
images, then by the cores a 16-core GPU host would give to the pipeline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks import distributed
from testkit import corpus
from testkit.models import tiny_checkpoint
from testkit.processes import Worker
from testkit.services import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[1]
HOST_CORES = 16


@dataclass
class Cpu:
    """CPU seconds of the worker's processes at one moment, by role."""

    main: float
    model: float
    decoders: float  # live decode processes, plus ended ones reaped by the model's process


def cpu_of(worker: Worker) -> Cpu:
    main = psutil.Process(worker.proc.pid)  # type: ignore[union-attr]
    model = psutil.Process(worker.model_pid())
    own = model.cpu_times()
    decoders = own.children_user + own.children_system
    for child in model.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            decoders += times.user + times.system
    mine = main.cpu_times()
    return Cpu(mine.user + mine.system, own.user + own.system, decoders)


def measure(source: str, images: list[corpus.Image], model: Path, labels: Path, workdir: Path,
            args: argparse.Namespace) -> dict[str, object]:
    mode = "services" if source == "s3" else "folder"
    with services(mode, workdir, args) as svc:
        svc.env.update(TAGGER_MODEL=str(model), TAGGER_LABELS=str(labels),
                       TAGGER_BACKEND="torch", TAGGER_PRECISION="float32",
                       TAGGER_FILE_ROOTS=str(workdir), TAGGER_CHUNK_SIZE=str(args.chunk_size),
                       **({"TAGGER_DECODE_PROCESSES": str(args.decode_processes)}
                          if args.decode_processes else {}))
        distributed.upload(svc, "warm", images[:32])
        distributed.upload(svc, "run", images)
        worker = Worker(svc.env, workdir / "worker.log", threads=None, name="feed").start(600)
        try:
            distributed.run(svc, worker, "warm", 32, timeout=600)  # processes and caches warm
            before = cpu_of(worker)
            result = distributed.run(svc, worker, "run", len(images), timeout=1800)
            after = cpu_of(worker)
        finally:
            worker.stop()
    per_image = {role: round(1000 * (getattr(after, role) - getattr(before, role)) / len(images),
                             3) for role in ("model", "decoders", "main")}
    total = sum(per_image.values())
    return {"source": source, "images": len(images), "failed": result.failed,
            "images_per_second_here": round(result.rate, 1), "cpu_ms_per_image": per_image,
            "cpu_ms_per_image_all": round(total, 3),
            "host_16_cores_images_per_second": round(HOST_CORES * 1000 / total),
            "model_processes_needed_for_that": round(HOST_CORES * 1000 / total
                                                     * per_image["model"] / 1000, 2),
            "one_model_process_images_per_second": round(1000 / per_image["model"])}


@contextlib.contextmanager
def services(mode: str, workdir: Path, args: argparse.Namespace
             ) -> Iterator[distributed.Services]:
    """S3 (moto) + Redis + PostgreSQL, or a folder + Redis + PostgreSQL."""
    if mode == "services":
        with distributed.services("services", workdir, redis_url=args.redis_url,
                                  postgres_url=args.postgres_url) as svc:
            yield svc
        return
    from testkit.services import postgres_database

    with postgres_database(args.postgres_url, prefix="tagger_feed") as url:
        yield distributed.Services(
            {"TAGGER_HOME": str(workdir / "home"), "TAGGER_QUEUE": f"feed-{os.getpid()}",
             "CELERY_BROKER_URL": args.redis_url, "DATABASE_URL": url}, url,
            folder=workdir / "images")


def report(rows: list[dict[str, object]]) -> None:
    print("\nCPU-ms per image, by worker process (tiny model; lower is better)")
    print(f"{'source':<8}{'model process':>15}{'decode procs':>14}{'celery main':>13}"
          f"{'all':>8}{'16-core host img/s':>20}{'model procs':>13}")
    for row in rows:
        cpu = row["cpu_ms_per_image"]
        print(f"{row['source']:<8}{cpu['model']:>15.3f}{cpu['decoders']:>14.3f}"  # type: ignore
              f"{cpu['main']:>13.3f}{row['cpu_ms_per_image_all']:>8.3f}"  # type: ignore
              f"{row['host_16_cores_images_per_second']:>20}"
              f"{row['model_processes_needed_for_that']:>13}")
    print("Issue 19's baseline (same machine, model process): boto3 GET 3.7-4.1, pebble "
          "hand-off 0.85, database 0.32, sha256 0.17, GPU-path copies ~0.32; whole 7.1-7.7.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--source", action="append", choices=["s3", "folder"])
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--decode-processes", type=int, default=0, help="0: the default")
    parser.add_argument("--corpus-dir", type=Path, default=ROOT / "corpus")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL",
                                                              "redis://127.0.0.1:6379/14"))
    parser.add_argument("--postgres-url", default=PG_ADMIN_URL)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    images = corpus.images(corpus.ensure(args.corpus_dir), "1200", args.images)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tagger-feed-") as temp:
        work = Path(temp)
        model = tiny_checkpoint(work / "model")
        labels = work / "labels.txt"
        labels.write_text("台灯\n家具\n桌子\n椅子\n猫\n狗\n", encoding="utf-8")
        for source in args.source or ["s3", "folder"]:
            print(f"[{time.strftime('%H:%M:%S')}] {source}: {args.images} images",
                  file=sys.stderr, flush=True)
            rows.append(measure(source, images, model, labels, work / source, args))
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
