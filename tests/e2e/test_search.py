"""search, similar and duplicates on real processes: a folder tagged with `producer tag` (SQLite,
the embedded default) and a fleet's PostgreSQL filled by a Celery worker over Redis and S3.

Random checkpoints blur the geometry (different photos reach cosine 0.98), so what is checked
is what pixels decide: an image's own embedding, its re-encoded and resized copies (0.9999 here,
the other images at most 0.98), identical bytes, and groups checked against every pair's exact
cosine from the kept embeddings."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import boto3
import numpy as np
import sqlalchemy as sa
from PIL import Image

from testkit.commands import one_line_error, producer, run_id, run_producer, tag_as_user
from testkit.commands import user_env as plain_env
from testkit.images import save
from worker.backends.probe import probe_images
from worker.core.pixels import Preprocess
from worker.core.settings import load_settings
from worker.db import labelsets, models, schema
from worker.db.schema import engine_for
from worker.search import Finder
from worker.search.store import Store

PHOTOS = 10
THRESHOLD = 0.999  # between the copies (>= 0.9999) and the other images (<= 0.98) here


def catalogue(folder: Path) -> dict[str, bytes]:
    """Photo-like images by name, one re-encoded and resized, one copied byte for byte."""
    folder.mkdir(parents=True)
    files = {f"p{i}.png": save(Image.fromarray(a), "PNG")
             for i, a in enumerate(probe_images(Preprocess(96, 96), PHOTOS, seed=7))}
    original = Image.open(io.BytesIO(files["p0.png"])).convert("RGB")
    files["p0-copy.jpg"] = save(original, "JPEG", quality=90)
    files["p0-small.png"] = save(original.resize((60, 60)), "PNG")
    files["p1-same.png"] = files["p1.png"]
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def names(hits: list[dict]) -> list[str]:
    return [Path(h["uri"]).name for h in hits]


def check_groups(url: str, model: str, groups: list[dict]) -> None:
    """Every pair at or above THRESHOLD (exact cosines of the kept embeddings) is in one group;
    every member has a partner that close (or identical bytes)."""
    store = Store(engine_for(url), load_settings({"DATABASE_URL": url, "TAGGER_MODEL": model}))
    keys, vectors = store.vectors(store.keys())
    images = store.images(keys)
    cos = vectors.astype(np.float32) @ vectors.astype(np.float32).T
    group_of = {m["uri"]: n for n, g in enumerate(groups) for m in g["members"]}
    for a, b in zip(*np.nonzero(np.triu(cos >= THRESHOLD, 1)), strict=True):
        uris = [i.uri for i in images[keys[a]] + images[keys[b]]]
        assert len({group_of.get(u) for u in uris}) == 1 and uris[0] in group_of, uris
    row = {i.uri: n for n, k in enumerate(keys) for i in images[k]}
    for g in groups:
        for m in g["members"]:
            others = [row[o["uri"]] for o in g["members"] if o["uri"] != m["uri"]]
            assert max(cos[row[m["uri"]], o] for o in others) >= THRESHOLD, m


def test_a_tagged_folder(tmp_path, tiny_model, labels_file):
    env = plain_env(TAGGER_HOME=str(tmp_path / "home"), TAGGER_MODEL=str(tiny_model),
                    TAGGER_LABELS=str(labels_file), TAGGER_CACHE_DIR=str(tmp_path / "cache"))
    catalogue(tmp_path / "photos")
    tag_as_user(str(tmp_path / "photos"), env, tmp_path, timeout=300)

    def run(*args: str) -> str:
        done = run_producer(*args, env=env, cwd=tmp_path, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout

    own = json.loads(run("similar", str(tmp_path / "photos" / "p0.png"), "--json", "--top", "5"))
    assert names(own)[0] == "p0.png" and own[0]["score"] > 0.9999
    assert set(names(own)[1:3]) == {"p0-copy.jpg", "p0-small.png"}
    elsewhere = tmp_path / "query.jpg"  # not catalogued: through the ONNX image tower
    shutil.copy(tmp_path / "photos" / "p0-copy.jpg", elsewhere)
    found = json.loads(run("similar", str(elsewhere), "--json", "--top", "3"))
    assert set(names(found)) == {"p0.png", "p0-copy.jpg", "p0-small.png"}

    text = json.loads(run("search", "台灯", "--json", "--top", "4"))
    assert len(text) == 4 and [h["score"] for h in text] == sorted(
        (h["score"] for h in text), reverse=True)
    for suffix in ("jsonl", "csv", "html"):
        run("duplicates", "--threshold", str(THRESHOLD), "--output", f"d.{suffix}")
    groups = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert sorted(sorted(names(g["members"])) for g in groups) == [
        ["p0-copy.jpg", "p0-small.png", "p0.png"], ["p1-same.png", "p1.png"]]
    assert [g["exact"] for g in groups] == [False, True]
    check_groups(f"sqlite:///{tmp_path / 'home' / 'results.db'}", str(tiny_model), groups)

    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture")
    for args in (["search", ""], ["search", "长" * 10_000], ["similar", str(not_image)],
                 ["search", "台灯", "--run", "nosuchrun"], ["search", "台灯", "--label", "鲸鱼"]):
        done = run_producer(*args, env=env, cwd=tmp_path, timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and lines[-1].startswith("Error: "), (args, done.stderr)
        assert "Traceback" not in done.stderr and len(lines) <= 2, (args, done.stderr)
    empty = {**env, "TAGGER_HOME": str(tmp_path / "empty")}
    done = run_producer("search", "台灯", env=empty, cwd=tmp_path, timeout=300)
    assert done.returncode == 1 and done.stderr.startswith("Error: no kept embeddings")


def test_a_fleet_database(tagger_env, bucket, start_worker, tmp_path):
    s3 = boto3.client("s3")
    for name, data in catalogue(tmp_path / "photos").items():
        s3.put_object(Bucket=bucket, Key=f"p/{name}", Body=data)
    first = run_id(producer("enqueue", f"s3://{bucket}/p/"))
    start_worker(tagger_env)
    producer("wait", "--run", first, "--timeout", "240")

    own = json.loads(producer("similar", f"s3://{bucket}/p/p0.png", "--json", "--top", "3"))
    assert names(own)[0] == "p0.png" and set(names(own)[1:]) == {"p0-copy.jpg", "p0-small.png"}
    assert len(json.loads(producer("search", "猫", "--run", first, "--json"))) == PHOTOS + 3
    finder = Finder(load_settings())
    near = finder.similar((tmp_path / "photos" / "p0-copy.jpg").read_bytes(), top=3)  # bytes
    assert {Path(h.uri).name for h in near} == {"p0.png", "p0-copy.jpg", "p0-small.png"}
    same = finder.duplicates_of(f"s3://{bucket}/p/p1.png", threshold=THRESHOLD)
    assert [Path(h.uri).name for h in same] == ["p1-same.png"] and same[0].score > 0.9999
    # The text tower in ONNX Runtime encodes a label as the workers' torch did for the labels.
    engine = engine_for(tagger_env["DATABASE_URL"])
    with engine.connect() as conn:
        labelset = conn.execute(sa.select(schema.labelsets.c.id)).scalar_one()
    served = models.latest(engine, tagger_env["TAGGER_MODEL"])
    rows, dim, data = labelsets.load_text_embeddings(engine, served.id, labelset,
                                                     "torch float32")
    stored = np.frombuffer(data, np.float32).reshape(rows, dim)
    labels = labelsets.load_labelset(engine, labelset).labels
    for n in (0, rows - 1):
        assert float(finder._text_vector(labels[n]) @ stored[n]) > 0.999
    assert "neither a catalogued image" in one_line_error("similar", "s3://nowhere/x.png")
    assert "no run nosuchrun" in one_line_error("search", "猫", "--run", "nosuchrun")
