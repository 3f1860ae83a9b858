"""Server time of the workbench's main pages at a million images on PostgreSQL.

    python -m benchmarks.workbench [--images 1000000] [--labels 1000] [--requests 40]

Creates its own PostgreSQL database at the current schema and fills it inside PostgreSQL (one
INSERT ... SELECT over generate_series): --images results of one run under one label set of
--labels labels (a skewed share per label, five labels with scores per image, 1% failed over
five reasons), a second, finished run of 1,000 images, and 5,000 reviewers' corrections; then
VACUUM ANALYZE, as autovacuum would leave it. Each page is then asked for --requests times
through the application in this process (Starlette's TestClient: routing, queries, templates;
no network and no pictures, whose cost is the decode processes'): the runs list, a run's page
(its figures as `producer status` counts them, its labels, its failures), a gallery's first
page and a page deep in it (a random keyset position), a page of failures, an image's page
(with its verdicts) and the label set's page. Prints p50 and p95 milliseconds per page; the
target is p95 <= 300 ms. The counts of a run's images (its figures, labels, failures) are made
off the request path and kept 30 s (producer/workbench/counted.py): their own time is printed
first, and pages are measured once they are made.

Search: each done image also has a kept embedding (benchmarks/workbench_kept.py) of a full-size
checkpoint of random weights. The server's Finder builds its index and loads the text tower
when the application starts (the time until a search answers is printed), then a text search
(a new text each time), its second page and "more like this" are timed like the pages (target:
p95 <= 100 ms), and the image page includes its near-duplicates; last, Finder.text and a
query's encoding alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from starlette.testclient import TestClient

from benchmarks import workbench_kept as kept
from producer.workbench.access import Access
from producer.workbench.app import create_app
from testkit.services import postgres_database
from worker.core.labels import LabelSet
from worker.core.settings import LABELSETS, load_settings
from worker.db.labelsets import save_labelset
from worker.db.runs import create_run, update_run
from worker.db.schema import engine_for

RUN, SMALL_RUN = "bench0000000000a", "bench0000000000b"
WORDS = [w for w in (LABELSETS / "ecommerce_zh.txt").read_text("utf-8").split() if w]
REASONS = ("undecodable", "not-found", "timeout", "too-large", "http-error")

# Labels by a skewed share: label i gets images in proportion to 1 / (i + 10). Scores from the
# row number, so that every gallery has a spread of scores and ties.
SEED = """
INSERT INTO results (uri, uri_hash, model, model_id, labelset_id, content_sha256, status,
                     reason, error, labels, top_label, top_score, run_id, runtime)
SELECT uri, encode(sha256(convert_to(uri, 'UTF8')), 'hex'), :model, :model_id, :labelset,
       encode(sha256(convert_to('content' || n, 'UTF8')), 'hex'),
       CASE WHEN n % 100 = 0 THEN 'failed' ELSE 'done' END,
       CASE WHEN n % 100 = 0 THEN (:reasons)[1 + (n / 100) % 5] END,
       CASE WHEN n % 100 = 0 THEN 'cannot read ' || uri END,
       CASE WHEN n % 100 = 0 THEN '[]'::jsonb ELSE jsonb_build_array(
           jsonb_build_object('label', 'label' || l, 'score', s),
           jsonb_build_object('label', 'label' || ((l + 1) % :labels), 'score', (1 - s) / 2),
           jsonb_build_object('label', 'label' || ((l + 2) % :labels), 'score', (1 - s) / 4),
           jsonb_build_object('label', 'label' || ((l + 3) % :labels), 'score', (1 - s) / 8),
           jsonb_build_object('label', 'label' || ((l + 4) % :labels), 'score', (1 - s) / 16))
       END,
       CASE WHEN n % 100 = 0 THEN NULL ELSE 'label' || l END,
       CASE WHEN n % 100 = 0 THEN NULL ELSE s END,
       :run, 'bench'
FROM (SELECT n, 's3://bench/' || lpad(n::text, 9, '0') || '.jpg' AS uri,
             least(:labels - 1, floor(exp(random() * ln(:labels + 10.0)) - 10 + 1)::int) AS l,
             round((0.2 + 0.8 * ((n::bigint * 7919) % 1000) / 1000.0)::numeric, 4)::float AS s
      FROM generate_series(:first, :last) AS n) AS made
"""
CORRECTIONS = """
INSERT INTO corrections (content_sha256, uri, labelset_id, label, verdict, reviewer)
SELECT content_sha256, uri, labelset_id, top_label,
       CASE WHEN id % 3 = 0 THEN 'wrong' ELSE 'right' END, 'bench'
FROM results WHERE status = 'done' AND id % :every = 0 ORDER BY id LIMIT :count
"""


def seed(url: str, images: int, labels: int, model: str, model_id: int
         ) -> tuple[LabelSet, dict[str, float]]:
    engine = engine_for(url)
    labelset = LabelSet(tuple(f"label{i}" for i in range(labels)), (None,) * labels,
                        name="bench")
    save_labelset(engine, labelset)
    started = time.perf_counter()
    for run, count in ((RUN, images), (SMALL_RUN, 1000)):
        create_run(engine, run, "s3://bench/", model, labelset.id)
        first = 1 if run == RUN else images + 1
        for low in range(first, first + count, 100_000):  # a transaction per 100,000 rows
            with engine.begin() as conn:
                conn.execute(sa.text(SEED), {
                    "labelset": labelset.id, "reasons": list(REASONS), "labels": labels,
                    "model": model, "model_id": model_id,
                    "run": run, "first": low, "last": min(first + count - 1, low + 99_999)})
        update_run(engine, run, finished=True, listed=count, enqueued=count)
    with engine.begin() as conn:
        conn.execute(sa.text(CORRECTIONS), {"every": max(1, images // 5000), "count": 5000})
    took = {"results_seconds": round(time.perf_counter() - started, 1)}
    took["kept_seconds"] = round(kept.fill(url, model_id, [
        n for n in range(1, images + 1001) if n % 100]), 1)  # each done image's embedding
    started = time.perf_counter()
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    took["vacuum_seconds"] = round(time.perf_counter() - started, 1)
    return labelset, took


def pages(url: str, labelset: LabelSet, rng: random.Random) -> dict[str, Any]:
    """Per page, a function of the request number that gives a path."""
    with engine_for(url).connect() as conn:
        keys = conn.scalars(sa.text("SELECT uri_hash FROM results TABLESAMPLE SYSTEM (1) "
                                    "LIMIT 500")).all()
        kept = conn.scalars(sa.text("SELECT uri_hash FROM results TABLESAMPLE SYSTEM (1) "
                                    "WHERE status = 'done' LIMIT 500")).all()  # embeddings
        positions = conn.execute(sa.text(
            "SELECT top_label, top_score, id FROM results TABLESAMPLE SYSTEM (1) "
            "WHERE run_id = :run AND status = 'done' LIMIT 500"), {"run": RUN}).all()
    busy = [f"label{i}" for i in range(20)]
    return {
        "runs": lambda i: "/",
        "run": lambda i: f"/runs/{RUN}",
        "gallery": lambda i: f"/runs/{RUN}/gallery?label={rng.choice(busy)}",
        "gallery deep": lambda i: "/runs/{}/gallery?label={}&after={!r}:{}".format(
            RUN, *rng.choice(positions)),
        "failures": lambda i: f"/runs/{RUN}/failures?reason={rng.choice(REASONS)}",
        "image": lambda i: f"/images/{rng.choice(keys)}",
        "label set": lambda i: f"/labelsets/{labelset.id}",
        # A new text each time (a query's embedding is remembered): the text tower runs.
        "search": lambda i: "/search?" + urlencode({"q": f"{rng.choice(WORDS)} {i}"}),
        "search page 2": lambda i: "/search?" + urlencode({"q": f"{rng.choice(WORDS)} p{i}",
                                                           "page": 2}),
        "more like this": lambda i: f"/images/{rng.choice(kept)}/similar",
    }


def searches(settings: Any, requests: int) -> dict[str, Any]:
    """Finder.text alone (top 48, a new text each time) and its text encoding alone, in a Finder
    of this process that reads the index the server saved (the server's own is not reachable
    through the TestClient)."""
    from producer.search import finder as made
    from worker.search.text import TextEncoder
    from worker.search.towers import towers

    finder = made(settings, lambda _: None)
    finder.text("预热", top=48)  # the index mapped, the tower loaded
    encoder = TextEncoder(towers(settings, print))
    took: dict[str, list[float]] = {"finder_text": [], "text_encoding": []}
    for i in range(requests):
        started = time.perf_counter()
        finder.text(f"{WORDS[i % len(WORDS)]} f{i}", top=48)
        took["finder_text"].append(1000 * (time.perf_counter() - started))
        started = time.perf_counter()
        encoder.encode(f"{WORDS[i % len(WORDS)]} e{i}", finder.templates)
        took["text_encoding"].append(1000 * (time.perf_counter() - started))
    return {name: summary(values) for name, values in took.items()}


def counting(url: str) -> dict[str, float]:
    """What the run page's and the runs list's counts take, off the request path."""
    from producer.workbench.routes.runs import RUNS, _count
    from worker.db.status import find_runs

    engine = engine_for(url)
    took = {}
    for name, count in (("run", lambda: _count(engine, RUN)),
                        ("runs", lambda: find_runs(engine, limit=RUNS))):
        started = time.perf_counter()
        count()
        took[f"{name}_count_ms"] = round(1000 * (time.perf_counter() - started), 1)
    return took


def measure(client: TestClient, path_of: Any, requests: int) -> dict[str, float]:
    # Warm: the first request compiles templates and plans, and starts the counts of a run's
    # images (producer/workbench/counted.py), which pages show once they are made.
    deadline = time.monotonic() + 300
    while 'class="counting"' in client.get(path_of(-1)).text and time.monotonic() < deadline:
        time.sleep(0.5)
    took = []
    for i in range(requests):
        started = time.perf_counter()
        answer = client.get(path_of(i))
        took.append(1000 * (time.perf_counter() - started))
        assert answer.status_code == 200, (path_of(i), answer.status_code, answer.text[:300])
    return summary(took)


def summary(took: list[float]) -> dict[str, float]:
    took = sorted(took)
    return {"p50_ms": round(statistics.median(took), 1),
            "p95_ms": round(took[max(0, int(0.95 * len(took)) - 1)], 1),
            "max_ms": round(took[-1], 1), "load": round(os.getloadavg()[0], 1)}


def ready(client: TestClient) -> float:
    """Seconds until a text search answers: the server's index built (its Finder starts with the
    server), then the text tower exported to ONNX (once per checkpoint) and loaded."""
    started = time.perf_counter()
    deadline = time.monotonic() + 7200
    while 'class="counting"' in client.get("/search?q=预热").text:
        if time.monotonic() > deadline:
            raise SystemExit("the search index was not ready in two hours")
        time.sleep(2)
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    with (postgres_database(prefix="tagger_bench") as url,
          tempfile.TemporaryDirectory(prefix="bench-workbench-") as work):
        model, model_id = kept.weights(Path(work), url)
        settings = load_settings(kept.environment(Path(work), model, url))
        labelset, seconds = seed(url, args.images, args.labels, model, model_id)
        print(json.dumps({"images": args.images, "labels": args.labels, "cpus": os.cpu_count(),
                          **seconds}), flush=True)
        print(json.dumps({"off_the_request_path": counting(url)}), flush=True)
        rng = random.Random(0)
        with TestClient(create_app(settings, Access(local_reviewer="bench")),
                        base_url="http://127.0.0.1") as client:
            print(json.dumps({"search_ready_seconds": ready(client)}), flush=True)
            for page, path_of in pages(url, labelset, rng).items():
                print(json.dumps({"page": page, "requests": args.requests,
                                  **measure(client, path_of, args.requests)}), flush=True)
        print(json.dumps({"search_alone": searches(settings, args.requests)}), flush=True)


if __name__ == "__main__":
    main()
