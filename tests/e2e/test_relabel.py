"""Kept embeddings end to end: a catalogue tagged, its image files deleted, then relabelled and
tagged nightly with other label sets from the kept embeddings alone (Redis, PostgreSQL, S3 and
one Celery worker)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import sqlalchemy as sa

from testkit.commands import (
    PRODUCER,
    assert_nothing_left,
    jsonl,
    producer,
    rows,
    run_id,
    run_producer,
    user_env,
)
from testkit.images import image_bytes
from testkit.models import direct_embeddings, direct_scores
from testkit.processes import Command
from worker.backends.weights import checkpoint_digest
from worker.core.contract import KEPT_RUNTIME, Item, Result
from worker.core.embedding import sha256_of
from worker.db import embeddings, models, writes
from worker.db.schema import engine_for

IMAGES = 24
SECOND = ["连衣裙", "台灯", "运动鞋", "手提包", "沙发", "冰箱"]
THIRD = ["猫", "狗", "椅子"]


def label_file(folder: Path, name: str, labels: list[str]) -> Path:
    path = folder / name
    path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return path


def test_relabel_and_nightly_runs_need_no_image_files(tagger_env, bucket, start_worker, tmp_path,
                                                      tiny_model, monkeypatch):
    url = tagger_env["DATABASE_URL"]
    monkeypatch.setenv("CATALOG_DATABASE_URL", url)
    s3 = boto3.client("s3")
    pictures = [image_bytes(100 + i) for i in range(IMAGES)]
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE public.products (id bigint PRIMARY KEY, image_url "
                             "text, updated_at timestamptz NOT NULL DEFAULT now())"))
        for i, data in enumerate(pictures):
            s3.put_object(Bucket=bucket, Key=f"p/{i}.png", Body=data)
            conn.execute(sa.text("INSERT INTO public.products (id, image_url) VALUES (:i, :u)"),
                         {"i": i, "u": f"s3://{bucket}/p/{i}.png"})
    table = ("--table", "public.products", "--version-column", "updated_at")
    first = run_id(producer("enqueue", *table))
    start_worker(tagger_env)
    producer("wait", "--run", first, "--timeout", "120")
    uris = {f"s3://{bucket}/p/{i}.png": i for i in range(IMAGES)}
    tagged = rows(url, run_id=first)
    assert {u for u, r in tagged.items() if r.status == "done"} == set(uris)
    for i in range(IMAGES):
        s3.delete_object(Bucket=bucket, Key=f"p/{i}.png")

    # A new label set: every image gets it from its kept embedding.
    sent = producer("relabel", "--labels", str(label_file(tmp_path, "second.txt", SECOND)))
    second = run_id(sent)
    assert f"{IMAGES} kept embeddings (one per distinct image content) in 1 range" in sent
    producer("wait", "--run", second, "--timeout", "120")
    status = json.loads(producer("status", "--run", second, "--json"))
    assert (status["run"]["state"], status["run"]["done"], status["run"]["failed"]) == (
        "complete", IMAGES, 0)
    producer("export", "--run", second, "--output", str(tmp_path / "second.jsonl"))
    records = {r["uri"]: r for r in jsonl(tmp_path / "second.jsonl")}
    assert set(records) == set(uris)
    assert {r["runtime"] for r in records.values()} == {KEPT_RUNTIME}

    # Against tagging the same images from pixels (transformers' own processor and towers).
    truth = direct_scores(tiny_model, SECOND, pictures)
    agree = 0
    for uri, i in uris.items():
        scores = {e["label"]: e["score"] for e in records[uri]["labels"]}
        assert max(abs(s - truth[i][label]) for label, s in scores.items()) <= 0.01
        agree += records[uri]["top_label"] == max(truth[i], key=truth[i].get)
    assert agree >= 0.99 * IMAGES
    reference = direct_embeddings(tiny_model, pictures)
    served = models.latest(engine_for(url), tagger_env["TAGGER_MODEL"])
    kept = embeddings.lookup(engine_for(url), served, [tagged[u].content_sha256 for u in uris])
    for uri, i in uris.items():
        vector = kept[tagged[uri].content_sha256].astype(np.float64)
        assert vector @ reference[i] / np.linalg.norm(vector) >= 0.9999

    # A nightly run of a third label set uses the kept embeddings unasked; a product whose
    # picture changed (a new version) is fetched, and its file is gone.
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("UPDATE public.products SET updated_at = now() + interval '1 day' "
                             "WHERE id = 0"))
    third = run_id(producer("enqueue", *table, "--labels",
                            str(label_file(tmp_path, "third.txt", THIRD))))
    producer("wait", "--run", third, "--timeout", "120")
    nightly = rows(url, run_id=third)
    assert nightly.pop(f"s3://{bucket}/p/0.png").reason == "not-found"
    assert len(nightly) == IMAGES - 1
    assert {(r.status, r.runtime) for r in nightly.values()} == {("done", KEPT_RUNTIME)}

    out = tmp_path / "embeddings.parquet"
    producer("export", "--embeddings", "--run", first, "--output", str(out))
    exported = pq.read_table(io.BytesIO(out.read_bytes())).to_pylist()
    assert {r["uri"] for r in exported} == set(uris)
    for record in exported:
        vector = kept[record["sha256"]]
        assert np.array_equal(np.asarray(record["embedding"], np.float32), vector)


def test_relabel_on_the_embedded_default_starts_and_stops_its_own_worker(tmp_path, tiny_model):
    env = user_env(TAGGER_HOME=str(tmp_path / "home"), TAGGER_MODEL=str(tiny_model),
                   TAGGER_BACKEND="torch")
    labels = str(label_file(tmp_path, "second.txt", SECOND))
    mistake = run_producer("relabel", "--labels", labels, env=env, cwd=tmp_path)
    assert mistake.returncode == 1 and mistake.stderr.startswith("Error: no image has a kept "
                                                                 "embedding"), mistake.stderr
    assert len(mistake.stderr.splitlines()) == 1
    url = f"sqlite:///{tmp_path / 'home' / 'results.db'}"
    vectors = np.random.default_rng(0).standard_normal((10, 16)).astype(np.float32)
    weights = checkpoint_digest(tiny_model, tmp_path / "cache").digest  # what the worker loads
    writes.write_results(engine_for(url), [
        Result(Item(f"/photos/{i}.png", version="v1"), str(tiny_model), "ls", run_id="first",
               content_sha256=sha256_of(bytes([i])), labels=[{"label": "猫", "score": 0.9}],
               weights=weights, embedding=vector / np.linalg.norm(vector))
        for i, vector in enumerate(vectors)], keep_embeddings=True)
    with Command([PRODUCER, "relabel", "--labels", labels], env, cwd=tmp_path) as command:
        assert command.wait(120) == 0, command.stderr + command.stdout
        assert "starting a worker" in command.stderr and "Traceback" not in command.stderr
        assert "relabelled 10 images" in command.stdout
        assert_nothing_left(command, env)
    relabelled = [r for r in rows(url).values() if r.run_id == run_id(command.stdout)]
    assert len(relabelled) == 10 and {r.runtime for r in relabelled} == {KEPT_RUNTIME}
    assert all(r.top_label in SECOND for r in relabelled)
