"""`python -m benchmarks.run`: seed-style loop vs tower vs decode vs the distributed pipeline."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import checkpoint, corpus, distributed, stages
from worker.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_LABELS = Path("/work/shared/data/labels")
SIX_LABELS = ["台灯", "家具", "桌子", "椅子", "猫", "狗"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--labels", choices=["6", "1000", "both"], default="both")
    p.add_argument("--corpus", choices=["originals", "1200", "both"], default="both")
    p.add_argument("--images", type=int, default=184,
                   help="images per pipeline run (the corpus repeated under distinct bytes)")
    p.add_argument("--seed-images", type=int, default=3,
                   help="images for the seed-style loop with 1,000 labels (~19 s each on 2 cores)")
    p.add_argument("--seed-images-6", type=int, default=20,
                   help="images for the seed-style loop with 6 labels")
    p.add_argument("--corpus-dir", type=Path, default=ROOT / "corpus",
                   help="make-corpus output (original/, catalog/); built there if missing")
    p.add_argument("--imagenet-labels", type=Path, default=SHARED_LABELS / "imagenet_cn.txt")
    p.add_argument("--pipeline", choices=["services", "redis", "embedded", "none"],
                   default="services",
                   help="services: S3 (moto) + Redis + PostgreSQL; redis: folder + Redis + "
                        "SQLite; embedded: folder + filesystem broker + SQLite; none: skip (4)")
    p.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL",
                                                         "redis://127.0.0.1:6379/0"))
    p.add_argument("--postgres-url", default=os.environ.get(
        "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="admin URL: a fresh database is created and dropped")
    p.add_argument("--tower-seconds", type=float, default=15.0)
    p.add_argument("--tiny", action="store_true", help="tiny random model (smoke test)")
    p.add_argument("--json", type=Path, help="also write all figures here")
    p.add_argument("--keep", action="store_true", help="keep the temporary checkpoint and logs")
    return p.parse_args(argv)


def _label_texts(args: argparse.Namespace) -> list[str]:
    files = [args.imagenet_labels, *sorted((ROOT / "worker" / "labelsets").glob("*.txt"))]
    return [*SIX_LABELS, *(f.read_text(encoding="utf-8") for f in files if f.exists())]


def _labels_file(which: str, args: argparse.Namespace, workdir: Path) -> tuple[Path, list[str]]:
    if which == "1000":
        path = args.imagenet_labels
        labels = [line.split("/")[-1].strip() for line in path.read_text("utf-8").splitlines()
                  if line.strip() and not line.startswith("#")]
        return path, labels
    path = workdir / "labels6.txt"
    path.write_text("\n".join(SIX_LABELS) + "\n", encoding="utf-8")
    return path, SIX_LABELS


def _bench_stages(model_dir: Path, corpora: dict[str, list[corpus.Image]],
                  args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, float]]:
    """(2) and (3) with the settings the worker will use (batch size, dtype, threads)."""
    from worker.model import Scorer

    settings = load_settings({**os.environ, "TAGGER_MODEL": str(model_dir)})
    scorer = Scorer(settings.model, settings.device, settings.dtype, settings.batch_size)
    import torch

    info = {"device": str(scorer.device), "dtype": str(scorer.dtype).removeprefix("torch."),
            "batch_size": scorer.batch_size, "decode_threads": settings.decode_threads,
            "torch_threads": torch.get_num_threads(), "chunk_size": settings.chunk_size,
            "torch": torch.__version__, "cpus": os.cpu_count(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if scorer.device.type == "cuda" else None}
    decode = {name: stages.decode_rate(images, scorer, settings)
              for name, images in corpora.items()}
    info["tower"] = stages.tower(scorer, seconds=args.tower_seconds)
    del scorer
    gc.collect()
    return info, decode


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request lines
    command = "python -m benchmarks.run " + " ".join(map(shlex.quote, sys.argv[1:]))
    corpus_names = ["originals", "1200"] if args.corpus == "both" else [args.corpus]
    root = corpus.ensure(args.corpus_dir)
    corpora = {name: corpus.images(root, name, args.images) for name in corpus_names}
    workdir = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    try:
        _measure(args, command, corpora, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(args: argparse.Namespace, command: str, corpora: dict[str, list[corpus.Image]],
             workdir: Path) -> None:
    label_sets = ["6", "1000"] if args.labels == "both" else [args.labels]
    corpus_names = list(corpora)
    _say(f"building the {'tiny' if args.tiny else 'full-size ViT-B/16'} random checkpoint")
    model_dir = checkpoint.build(workdir / "model", _label_texts(args), tiny=args.tiny)
    os.environ["TAGGER_MODEL"] = str(model_dir)
    _say("measuring (2) the bare image tower and (3) decode alone")
    info, decode = _bench_stages(model_dir, corpora, args)
    rows: list[dict[str, Any]] = []
    for which in label_sets:
        labels_path, labels = _labels_file(which, args, workdir)
        seed_n = args.seed_images if which == "1000" else args.seed_images_6
        for name in corpus_names:
            _say(f"measuring (1) the seed-style loop: {which} labels, {name}, {seed_n} images")
            seed = stages.seed_loop(model_dir, corpora[name][:seed_n], labels)
            rows.append({"labels": which, "corpus": name, "seed_images": seed_n,
                         "seed_loop": seed, "tower": info["tower"], "decode": decode[name],
                         "bound": 1 / (1 / info["tower"] + 1 / decode[name])})
        if args.pipeline != "none":
            _pipeline(args, which, labels_path, corpora, workdir,
                      [r for r in rows if r["labels"] == which])
    _report(command, info, rows, args)


def _pipeline(args: argparse.Namespace, which: str, labels_path: Path,
              corpora: dict[str, list[corpus.Image]], workdir: Path,
              rows: list[dict[str, Any]]) -> None:
    """(4): one worker per label set, warmed up (text side encoded) before the clock starts."""
    run_dir = workdir / f"pipeline-{which}"
    run_dir.mkdir(parents=True, exist_ok=True)
    with distributed.services(args.pipeline, run_dir, redis_url=args.redis_url,
                              postgres_url=args.postgres_url) as svc:
        env = {**svc.env, "TAGGER_MODEL": str(workdir / "model"),
               "TAGGER_LABELS": str(labels_path)}
        svc.env = env
        for row in rows:
            _say(f"uploading {len(corpora[row['corpus']])} images ({row['corpus']})")
            distributed.upload(svc, row["corpus"], corpora[row["corpus"]])
        _say(f"starting the worker ({which} labels; warm-up encodes the label set)")
        started = time.perf_counter()
        worker = distributed.Worker(env, run_dir / "worker.log").start()
        warm_up = time.perf_counter() - started
        try:
            for row in rows:
                _say(f"measuring (4) the pipeline: {which} labels, {row['corpus']}")
                result = distributed.run(svc, worker, row["corpus"], len(corpora[row["corpus"]]),
                                         timeout=max(600.0, 3.0 * args.images))
                row.update(pipeline=result.rate, pipeline_detail=asdict(result),
                           worker_start_s=round(warm_up, 1), mode=args.pipeline)
        finally:
            worker.stop()
        for row in rows:
            row["memory"] = worker.memory.as_dict()


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _report(command: str, info: dict[str, Any], rows: list[dict[str, Any]],
            args: argparse.Namespace) -> None:
    for row in rows:
        if "pipeline" in row:
            row["vs_seed"] = row["pipeline"] / row["seed_loop"]
            row["vs_bound"] = row["pipeline"] / row["bound"]
            row["vs_tower"] = row["pipeline"] / row["tower"]
    print(f"command: {command}")
    where = info["gpu"] or f"{info['cpus']} CPUs"
    print(f"device {info['device']} ({where}), "
          f"dtype {info['dtype']}, batch {info['batch_size']}, chunk {info['chunk_size']}, "
          f"{info['decode_threads']} decode threads, {info['torch_threads']} torch threads, "
          f"torch {info['torch']}, model {'tiny' if args.tiny else 'ViT-B/16 (random weights)'}")
    print(f"(4): {args.pipeline} pipeline, {args.images} images per run, one worker process, "
          "timed from the run's first enqueue to the last committed row; the worker is warmed "
          "up first, so the label set's text encoding (cached in the DB) is not in (4)")
    head = ["labels", "corpus", "(1) seed", "(2) tower", "(3) decode", "bound", "(4) pipeline",
            "(4)/(1)", "(4)/bound", "(4)/(2)", "busy", "RSS warm/end/max MiB"]
    table = [head]
    for r in rows:
        mem = r.get("memory", {})
        table.append([
            r["labels"], r["corpus"], f"{r['seed_loop']:.3f} (n={r['seed_images']})",
            f"{r['tower']:.1f}", f"{r['decode']:.1f}", f"{r['bound']:.1f}",
            f"{r['pipeline']:.2f}" if "pipeline" in r else "-",
            f"{r['vs_seed']:.1f}x" if "vs_seed" in r else "-",
            f"{r['vs_bound']:.2f}" if "vs_bound" in r else "-",
            f"{r['vs_tower']:.2f}" if "vs_tower" in r else "-",
            f"{r['pipeline_detail']['model_busy']:.0%}" if "pipeline" in r else "-",
            (f"{mem['after_warm_up_mib']:.0f}/{mem['end_mib']:.0f}/"
             f"{mem['max_after_warm_up_mib']:.0f} (peak {mem['lifetime_peak_mib']:.0f})")
            if mem else "-"])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    print("images/s throughout; bound = 1/(1/(2) + 1/(3)); busy = share of (4) spent in forward "
          "passes; RSS of the worker child holding the model (peak: whole life, warm-up "
          "included)")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "info": info, "rows": rows},
                                        indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
