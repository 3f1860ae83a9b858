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
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from starlette.testclient import TestClient

from producer.workbench.access import Access
from producer.workbench.app import create_app
from testkit.services import postgres_database
from worker.core.labels import LabelSet
from worker.core.settings import load_settings
from worker.db.labelsets import save_labelset
from worker.db.runs import create_run, update_run
from worker.db.schema import engine_for

RUN, SMALL_RUN = "bench0000000000a", "bench0000000000b"
REASONS = ("undecodable", "not-found", "timeout", "too-large", "http-error")

# Labels by a skewed share: label i gets images in proportion to 1 / (i + 10). Scores from the
# row number, so that every gallery has a spread of scores and ties.
SEED = """
INSERT INTO results (uri, uri_hash, model, labelset_id, content_sha256, status, reason, error,
                     labels, top_label, top_score, run_id, runtime)
SELECT uri, encode(sha256(convert_to(uri, 'UTF8')), 'hex'), 'bench-model', :labelset,
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


def seed(url: str, images: int, labels: int) -> tuple[LabelSet, float]:
    engine = engine_for(url)
    labelset = LabelSet(tuple(f"label{i}" for i in range(labels)), (None,) * labels,
                        name="bench")
    save_labelset(engine, labelset)
    started = time.perf_counter()
    for run, count in ((RUN, images), (SMALL_RUN, 1000)):
        create_run(engine, run, "s3://bench/", "bench-model", labelset.id)
        first = 1 if run == RUN else images + 1
        for low in range(first, first + count, 100_000):  # a transaction per 100,000 rows
            with engine.begin() as conn:
                conn.execute(sa.text(SEED), {
                    "labelset": labelset.id, "reasons": list(REASONS), "labels": labels,
                    "run": run, "first": low, "last": min(first + count - 1, low + 99_999)})
        update_run(engine, run, finished=True, listed=count, enqueued=count)
    with engine.begin() as conn:
        conn.execute(sa.text(CORRECTIONS), {"every": max(1, images // 5000), "count": 5000})
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    return labelset, time.perf_counter() - started


def pages(url: str, labelset: LabelSet, rng: random.Random) -> dict[str, Any]:
    """Per page, a function of the request number that gives a path."""
    with engine_for(url).connect() as conn:
        keys = conn.scalars(sa.text("SELECT uri_hash FROM results TABLESAMPLE SYSTEM (1) "
                                    "LIMIT 500")).all()
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
    }


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
    while 'class="counting"' in client.get(path_of(0)).text and time.monotonic() < deadline:
        time.sleep(0.5)
    took = []
    for i in range(requests):
        started = time.perf_counter()
        answer = client.get(path_of(i))
        took.append(1000 * (time.perf_counter() - started))
        assert answer.status_code == 200, (path_of(i), answer.status_code, answer.text[:300])
    took.sort()
    return {"p50_ms": round(statistics.median(took), 1),
            "p95_ms": round(took[max(0, int(0.95 * len(took)) - 1)], 1),
            "max_ms": round(took[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    with postgres_database(prefix="tagger_bench") as url, tempfile.TemporaryDirectory() as home:
        labelset, seconds = seed(url, args.images, args.labels)
        print(json.dumps({"images": args.images, "labels": args.labels,
                          "seed_seconds": round(seconds, 1)}), flush=True)
        print(json.dumps({"off_the_request_path": counting(url)}), flush=True)
        settings = load_settings({"DATABASE_URL": url, "TAGGER_HOME": str(Path(home))})
        rng = random.Random(0)
        with TestClient(create_app(settings, Access(local_reviewer="bench")),
                        base_url="http://127.0.0.1") as client:
            for page, path_of in pages(url, labelset, rng).items():
                print(json.dumps({"page": page, "requests": args.requests,
                                  **measure(client, path_of, args.requests)}), flush=True)


if __name__ == "__main__":
    main()
