"""`python -m benchmarks.run`: seed-style loop vs each runtime's tower, decode and pipeline.

Per runtime (backend and precision): (2) its image tower, the worst image-embedding cosine and
largest score difference to torch float32 over the whole corpus; per decoder: (3) its rate;
then (1) the seed-style loop, bound = 1/(1/(2) + 1/(3)) and (4) the whole pipeline.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import distributed, report, stages
from testkit import corpus
from testkit.processes import Worker
from testkit.services import PG_ADMIN_URL
from worker import checkpoint
from worker.backends import BACKENDS
from worker.core.labels import load_labelset
from worker.core.settings import LABELSETS, load_settings
from worker.decoders import DECODERS, decoder_name
from worker.prep.pool import prep_pool

ROOT = Path(__file__).resolve().parents[1]
SIX_LABELS = ["台灯", "家具", "桌子", "椅子", "猫", "狗"]
IMAGENET = LABELSETS / "imagenet_zh.txt"
ALL_RUNTIMES = "torch:float32,onnx:float32,onnx:int8"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", choices=["6", "1000", "both"], default="both")
    p.add_argument("--corpus", choices=["originals", "1200", "both"], default="both")
    p.add_argument("--backend", default=ALL_RUNTIMES,
                   help="runtimes as backend:precision, comma-separated, or `auto` (what a "
                        f"worker with TAGGER_BACKEND=auto picks) [default: {ALL_RUNTIMES}]")
    p.add_argument("--images", type=int, default=184,
                   help="images per pipeline run (the corpus repeated under distinct bytes)")
    p.add_argument("--seed-images", type=int, default=3,
                   help="images for the seed-style loop with 1,000 labels (~13 s each on 2 cores)")
    p.add_argument("--seed-images-6", type=int, default=20,
                   help="images for the seed-style loop with 6 labels")
    p.add_argument("--corpus-dir", type=Path, default=ROOT / "corpus",
                   help="folder with original/ and catalog/ images; built there if missing")
    p.add_argument("--pipeline", choices=["services", "redis", "embedded", "none"],
                   default="services",
                   help="services: S3 (moto) + Redis + PostgreSQL; redis: folder + Redis + "
                        "SQLite; embedded: folder + filesystem broker + SQLite; none: skip (4)")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL",
                                                         "redis://127.0.0.1:6379/14"))
    p.add_argument("--postgres-url", default=PG_ADMIN_URL,
                   help="admin URL: a fresh database is created and dropped")
    p.add_argument("--tower-seconds", type=float, default=15.0)
    p.add_argument("--tiny", action="store_true", help="tiny random model (smoke test)")
    p.add_argument("--json", type=Path, help="also write all figures here")
    p.add_argument("--keep", action="store_true", help="keep the temporary checkpoint and logs")
    return p.parse_args(argv)


def runtimes(spec: str) -> list[tuple[str, str]]:
    if spec == "auto":
        return [("auto", "auto")]
    return [(part.split(":")[0], part.split(":")[1] if ":" in part else "auto")
            for part in spec.split(",") if part]


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    command = "python -m benchmarks.run " + " ".join(map(shlex.quote, sys.argv[1:]))
    names = ["originals", "1200"] if args.corpus == "both" else [args.corpus]
    root = corpus.ensure(args.corpus_dir)
    corpora = {name: corpus.images(root, name, args.images) for name in names}
    workdir = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    try:
        say(f"building the {'tiny' if args.tiny else 'full-size ViT-B/16'} random checkpoint")
        texts = [*SIX_LABELS, *(p.read_text(encoding="utf-8") for p in LABELSETS.glob("*.txt"))]
        model = checkpoint.build(workdir / "model", texts, tiny=args.tiny)
        os.environ.update(TAGGER_MODEL=str(model), TAGGER_CACHE_DIR=str(workdir / "cache"))
        # Stages (2)-(3) on each distinct photo once: the copies decode and embed the same.
        distinct = {name: images[:len(corpus.photos(root, name))]
                    for name, images in corpora.items()}
        info, tower_rows = measure_stages(model, distinct, runtimes(args.backend), args)
        rows = measure_runs(model, corpora, tower_rows, args, workdir)
        report.print_report(command, info, rows, args)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def load(model: Path, backend: str, precision: str) -> Any:
    settings = load_settings({**os.environ, "TAGGER_BACKEND": backend,
                              "TAGGER_PRECISION": precision})
    if backend == "auto":
        from worker.backends.choose import choose

        return choose(settings, model)
    return BACKENDS.get(backend)(settings, model, precision=precision)


def measure_stages(model: Path, corpora: dict[str, list[corpus.Image]],
                   wanted: list[tuple[str, str]], args: argparse.Namespace
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(2) and accuracy per runtime, (3) per decoder and corpus, with the worker's settings."""
    settings = load_settings()
    reference = load(model, "torch", "float32")
    texts = {"6": reference.encode_texts([[label] for label in SIX_LABELS]),
             "1000": reference.encode_texts(load_labelset(IMAGENET).prompts())}
    spec = reference.preprocess
    # The worker's decoder (its rate is (3)); on a GPU, Pillow's too, what nvJPEG is measured
    # against. Each runs as in the worker: decode processes, then `finish` here.
    names = list(dict.fromkeys([decoder_name(settings.decoder, reference.device), "pillow"]))
    decoders = [(DECODERS.get(n)(settings, reference.device), prep_pool(settings, n, spec, False))
                for n in names]
    decoder = decoders[0][0]
    info = report.machine(settings, reference, decoder)
    decoded, info["decode"], info["other_decoders"] = {}, {}, {}
    for name, images in corpora.items():
        say(f"measuring (3) the {decoder.name} decoder on {name}")
        info["decode"][name], decoded[name] = stages.decode_all(
            decoders[0][1], decoder, images, spec, reference.batch_size)
        for other, pool in decoders[1:]:
            info["other_decoders"][f"{other.name}/{name}"] = stages.decode_all(
                pool, other, images, spec, reference.batch_size)[0]
    truth = {name: stages.embed(reference, pixels) for name, pixels in decoded.items()}
    rows = []
    for backend, precision in wanted:
        say(f"measuring (2) the tower and accuracy of {backend} {precision}")
        runtime = load(model, backend, precision)
        row: dict[str, Any] = {"backend": backend, "precision": precision,
                               "runtime": runtime.description,
                               "tower": stages.tower(runtime, args.tower_seconds),
                               "candidates": getattr(runtime, "candidates", [])}
        for name, pixels in decoded.items():
            same = (backend, precision) == ("torch", "float32")  # the reference itself
            embeddings = truth[name] if same else stages.embed(runtime, pixels)
            for which, text in texts.items():
                row[f"accuracy/{name}/{which}"] = stages.accuracy(
                    truth[name], embeddings, text, reference.logit_scale)
        rows.append(row)
        del runtime
        gc.collect()
    for closing, pool in decoders:
        closing.close()
        pool.close()
    return info, rows


def measure_runs(model: Path, corpora: dict[str, list[corpus.Image]],
                 towers: list[dict[str, Any]], args: argparse.Namespace, workdir: Path
                 ) -> list[dict[str, Any]]:
    """(1) per label set and corpus; (4) per label set, corpus and runtime."""
    label_sets = ["6", "1000"] if args.labels == "both" else [args.labels]
    rows = []
    for which in label_sets:
        path, labels = label_file(which, workdir)
        seeds = {}
        for name, images in corpora.items():
            n = args.seed_images if which == "1000" else args.seed_images_6
            say(f"measuring (1) the seed-style loop: {which} labels, {name}, {n} images")
            seeds[name] = (n, stages.seed_loop(model, images[:n], labels))
        for tower in towers:
            group = [{"labels": which, "corpus": name, "seed_images": seeds[name][0],
                      "seed_loop": seeds[name][1], **tower}
                     for name in corpora]
            if args.pipeline != "none":
                pipeline(args, which, path, tower, corpora, workdir, group)
            rows.extend(group)
    return rows


def label_file(which: str, workdir: Path) -> tuple[Path, list[str]]:
    """The label file a worker is given, and its labels."""
    if which == "1000":
        return IMAGENET, list(load_labelset(IMAGENET).labels)
    path = workdir / "labels6.txt"
    path.write_text("\n".join(SIX_LABELS) + "\n", encoding="utf-8")
    return path, SIX_LABELS


def pipeline(args: argparse.Namespace, which: str, labels: Path, tower: dict[str, Any],
             corpora: dict[str, list[corpus.Image]], workdir: Path,
             rows: list[dict[str, Any]]) -> None:
    """(4): one worker per label set and runtime, warmed up before the clock starts."""
    run_dir = workdir / f"pipeline-{which}-{tower['backend']}-{tower['precision']}"
    run_dir.mkdir(parents=True, exist_ok=True)
    with distributed.services(args.pipeline, run_dir, redis_url=args.redis_url,
                              postgres_url=args.postgres_url) as svc:
        svc.env.update(TAGGER_MODEL=os.environ["TAGGER_MODEL"], TAGGER_LABELS=str(labels),
                       TAGGER_BACKEND=tower["backend"], TAGGER_PRECISION=tower["precision"],
                       TAGGER_FILE_ROOTS=str(run_dir))
        for row in rows:
            distributed.upload(svc, row["corpus"], corpora[row["corpus"]])
        say(f"starting the worker ({which} labels, {tower['runtime']})")
        started = time.perf_counter()
        worker = Worker(svc.env, run_dir / "worker.log", threads=None, name="bench").start(900)
        warm_up = time.perf_counter() - started
        worker.sample_rss()
        try:
            for row in rows:
                say(f"measuring (4) the pipeline: {which} labels, {row['corpus']}")
                result = distributed.run(svc, worker, row["corpus"], len(corpora[row["corpus"]]),
                                         timeout=max(600.0, 3.0 * args.images))
                row.update(pipeline=result.rate, pipeline_detail=asdict(result),
                           worker_start_s=round(warm_up, 1), mode=args.pipeline)
        finally:
            memory = distributed.memory(worker)
            worker.stop()
        for row in rows:
            row["memory"] = memory


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
