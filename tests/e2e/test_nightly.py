"""Nightly runs end to end: catalogue table -> producer -> Redis -> worker -> PostgreSQL, again.

Real PostgreSQL (catalogue and results), Redis, a Celery worker, moto's S3 server and a local
HTTP server; the cron line shipped in deploy/nightly.cron is run as it stands (with its lock file
moved under the test's folder).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa

from testkit.commands import ROOT, count, producer, rows, run_id
from testkit.faults import ImageServer, Reply
from testkit.images import image_bytes
from testkit.models import TEST_LABELS
from worker.core.labels import load_labelset
from worker.core.settings import DEFAULT_LABELS
from worker.db.schema import engine_for

CRON = ROOT / "deploy" / "nightly.cron"
CRON_LOCK = "/run/lock/catalog-tagger-nightly.lock"


@pytest.fixture
def origin() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def cron_command(lock: Path) -> str:
    """The command of the shipped cron line: from `flock` up to the log redirection."""
    line = next(line for line in CRON.read_text().splitlines() if re.match(r"^[\d*]", line))
    return line[line.index("flock"):line.index(" >>")].replace(CRON_LOCK, str(lock))


def run_cron(env: dict[str, str], lock: Path, timeout: float = 150
             ) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return subprocess.run(["sh", "-c", cron_command(lock)], env={**os.environ, **env,
                          "PATH": path}, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def make_catalogue(url: str, products: list[tuple[int, str | None]]) -> None:
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE public.products (id bigint PRIMARY KEY, title text, "
                             "image_url text, updated_at timestamptz NOT NULL DEFAULT now())"))
        for key, image_url in products:
            conn.execute(sa.text("INSERT INTO public.products (id, title, image_url) "
                                 "VALUES (:id, 'product', :url)"), {"id": key, "url": image_url})


def test_catalogue_table_every_night(tagger_env, bucket, start_worker, tmp_path, origin,
                                     monkeypatch):
    files = tmp_path / "files"
    files.mkdir()
    # A catalogue run has no folder of its own: the worker reads local files under these roots.
    env = {**tagger_env, "TAGGER_LABELS": str(DEFAULT_LABELS), "TAGGER_ALLOW_PRIVATE_URLS": "1",
           "CATALOG_DATABASE_URL": tagger_env["DATABASE_URL"], "TAGGER_FILE_ROOTS": str(files)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    url = env["DATABASE_URL"]
    s3 = boto3.client("s3")
    for i in (1, 2):
        s3.put_object(Bucket=bucket, Key=f"p/{i}.png", Body=image_bytes(i))
    origin.routes.update({"/4.png": Reply(image_bytes(4, fmt="JPEG")),
                          "/5.png": Reply(image_bytes(5))})
    (files / "6.png").write_bytes(image_bytes(6))
    (files / "7.png").write_bytes(image_bytes(7))
    make_catalogue(url, [
        (1, f"s3://{bucket}/p/1.png"), (2, f"s3://{bucket}/p/2.png"),
        (3, f"s3://{bucket}/p/missing.png"), (4, origin.url("/4.png")),
        (5, origin.url("/5.png")), (6, str(files / "6.png")), (7, (files / "7.png").as_uri()),
        (8, None), (9, origin.url("/4.png"))])  # a second product showing the same picture
    table = ("--table", "public.products", "--version-column", "updated_at")

    # The night's enqueue; no worker has started yet.
    first = producer("enqueue", "--database-url", url, *table)
    assert "listed 9, enqueued 7 in 1 chunk, skipped 2 (1 no-url, 1 in-flight)" in first
    night = run_id(first)
    # Last night's cron job still holds the lock: tonight's start does nothing.
    lock = tmp_path / "nightly.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        blocked = run_cron(env, lock, timeout=30)
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    assert len(json.loads(producer("runs", "--json"))) == 1

    # The next start, unlocked, while the images are still in flight: nothing is sent twice;
    # then it waits until the worker has answered them all.
    start_worker(env)
    cron = run_cron(env, lock)
    assert cron.returncode == 0, cron.stdout + cron.stderr
    assert "listed 9, enqueued 0 in 0 chunks, skipped 9" in cron.stdout

    tagged = rows(url)
    assert len(tagged) == 7
    keys = {row.item_key: row for row in tagged.values()}
    assert set(keys) == {"1", "2", "3", "4", "5", "6", "7"}  # product 9 shares 4's picture
    assert (keys["3"].status, keys["3"].reason) == ("failed", "not-found")
    shipped = load_labelset(DEFAULT_LABELS)
    parents = dict(zip(shipped.labels, shipped.parents, strict=True))
    for row in tagged.values():
        assert row.run_id == night
        if row.status == "done":
            assert row.content_sha256 and len(row.labels) == 5
            assert all(entry["parent"] == parents[entry["label"]] for entry in row.labels)

    status = json.loads(producer("status", "--run", night, "--json"))
    assert (status["done"], status["failed"], status["pending"]) == (6, 1, 0)
    assert status["run"]["state"] == "complete" and status["failed_by_reason"] == {
        "not-found": 1}
    listed = json.loads(producer("runs", "--json"))
    assert [(r["listed"], r["enqueued"], r["skipped"], r["done"], r["failed"])
            for r in listed] == [(9, 0, 9, 0, 0), (9, 7, 2, 6, 1)]
    exported = [json.loads(line) for line in producer("export", "--run", night).splitlines()]
    assert len(exported) == 7
    for record in exported:
        if record["status"] == "done":
            assert record["top_parent"] == parents[record["top_label"]]
            assert record["key"] in {"1", "2", "4", "5", "6", "7"}

    # Product 5 gets a new picture at the same URL (its updated_at moves): only it is due.
    origin.routes["/5.png"] = Reply(image_bytes(55))
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("UPDATE products SET updated_at = now() + interval '1 hour' "
                             "WHERE id = 5"))
    cron = run_cron(env, lock)
    assert cron.returncode == 0, cron.stdout + cron.stderr
    assert "listed 9, enqueued 1 in 1 chunk, skipped 8" in cron.stdout
    again = rows(url)
    changed = again[origin.url("/5.png")]
    assert changed.content_sha256 != tagged[origin.url("/5.png")].content_sha256
    assert changed.run_id == run_id(cron.stdout)
    assert all(again[uri].updated_at == row.updated_at for uri, row in tagged.items()
               if uri != changed.uri)


def test_bucket_incremental_and_label_sets(tagger_env, bucket, start_worker, tmp_path):
    url = tagger_env["DATABASE_URL"]
    s3 = boto3.client("s3")
    for i in range(6):
        s3.put_object(Bucket=bucket, Key=f"p/{i}.png", Body=image_bytes(200 + i))
    start_worker(tagger_env)
    flat = load_labelset(Path(tagger_env["TAGGER_LABELS"]))

    first = producer("enqueue", "--bucket", bucket)
    assert "enqueued 6" in first
    producer("wait", "--timeout", "120")
    before = rows(url, labelset_id=flat.id)
    assert len(before) == 6 and {r.status for r in before.values()} == {"done"}

    # One object's bytes change (new ETag): only it is enqueued again.
    s3.put_object(Bucket=bucket, Key="p/2.png", Body=image_bytes(999))
    second = producer("enqueue", "--bucket", bucket)
    assert "enqueued 1 in 1 chunk, skipped 5" in second
    producer("wait", "--timeout", "120")
    after = rows(url, labelset_id=flat.id)
    moved = f"s3://{bucket}/p/2.png"
    assert after[moved].content_sha256 != before[moved].content_sha256
    assert after[moved].run_id == run_id(second)
    assert all(after[u].updated_at == r.updated_at for u, r in before.items() if u != moved)

    # A label is added: a new label set, so everything is due; the old rows stay.
    more = tmp_path / "more.txt"
    more.write_text("\n".join([*TEST_LABELS, "沙发"]) + "\n", encoding="utf-8")
    third = producer("enqueue", "--bucket", bucket, "--labels", str(more))
    assert "enqueued 6" in third
    producer("wait", "--timeout", "120")
    new_id = load_labelset(more).id
    assert len(rows(url, labelset_id=new_id)) == 6
    assert rows(url, labelset_id=flat.id) == after
    exported = [json.loads(line) for line in producer("export", "--run", run_id(third))
                .splitlines()]
    assert {(r["labelset_id"], r["status"]) for r in exported} == {(new_id, "done")}

    # Two label sets in one night: two enqueues, the same worker, results keyed by label set.
    rooms = tmp_path / "rooms.txt"
    rooms.write_text("家居/台灯\n家居/桌子\n家居/椅子\n宠物/猫\n宠物/狗\n", encoding="utf-8")
    pets = tmp_path / "pets.txt"
    pets.write_text("猫\n狗\n", encoding="utf-8")
    night = [run_id(producer("enqueue", "--bucket", bucket, "--labels", str(path)))
             for path in (rooms, pets)]
    producer("wait", "--all", "--timeout", "120")
    for path, run in zip((rooms, pets), night, strict=True):
        labelset = load_labelset(path)
        tagged = rows(url, labelset_id=labelset.id)
        assert len(tagged) == 6 and {r.run_id for r in tagged.values()} == {run}
        assert {len(r.labels) for r in tagged.values()} == {min(5, len(labelset.labels))}
        assert all(("parent" in e) == (path == rooms) for r in tagged.values()
                   for e in r.labels)
    assert count(url, "runs") == 5

    # --force re-tags everything of the default label set, still one row per image.
    forced = producer("enqueue", "--bucket", bucket, "--force")
    assert "enqueued 6" in forced
    producer("wait", "--timeout", "120")
    assert {r.run_id for r in rows(url, labelset_id=flat.id).values()} == {run_id(forced)}
    assert count(url) == 6 * 4
