"""The producer's due check, pending claims and run records, on real Redis and PostgreSQL."""

from __future__ import annotations

import base64
import json
import uuid
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from producer import enqueue as enqueuing
from producer import sending
from producer.cli import main
from testkit.services import REDIS_URL
from worker.core.celeryconf import tagging_queue
from worker.core.contract import MAX_URI_CHARS, Item, Result
from worker.core.errors import Reason, Skip, SourceError
from worker.core.labels import LabelSet
from worker.core.settings import Settings, load_settings
from worker.db import status as db_status
from worker.db.schema import engine_for, pending, results, runs
from worker.db.writes import write_results
from worker.sources import Listed, Skipped

FLAT = LabelSet(labels=("台灯", "椅子"), parents=(None, None), name="flat")
TWO_LEVEL = LabelSet(labels=("台灯", "椅子", "沙发"), parents=("家居", "家居", "家居"),
                     name="two-level")


@pytest.fixture
def settings(pg_url: str, tmp_path: Path) -> Iterator[Settings]:
    settings = load_settings({"CELERY_BROKER_URL": REDIS_URL, "DATABASE_URL": pg_url,
                              "TAGGER_QUEUE": f"test-enqueue-{uuid.uuid4().hex[:8]}",
                              "TAGGER_MODEL": "model-a", "TAGGER_HOME": str(tmp_path / "home")})
    yield settings
    redis.Redis.from_url(REDIS_URL).delete(tagging_queue(settings))


NOT_IMAGE = Skipped(Skip.NOT_IMAGE, "notes.txt")


def run(settings: Settings, items: Iterable[Listed], labelset: LabelSet = FLAT,
        **kwargs) -> enqueuing.Summary:
    return enqueuing.enqueue(items, settings=settings, labelset=labelset, source="test",
                             chunk_size=4, **kwargs)


def run_info(settings: Settings, run_id: str) -> dict:
    (info,) = db_status.find_runs(engine_for(settings.database_url), run_id)
    return info


def messages(settings: Settings) -> list[dict]:
    """Pop every chunk message of the queue: the task's keyword arguments."""
    client = redis.Redis.from_url(settings.broker_url)
    out = []
    while raw := client.rpop(tagging_queue(settings)):
        envelope = json.loads(raw)
        body = base64.b64decode(envelope["body"])
        assert envelope["headers"]["task"] == "tagger.tag_chunk"
        assert envelope["headers"]["compression"] == "application/x-gzip"
        _args, kwargs, _embed = json.loads(zlib.decompress(body))
        out.append(kwargs)
    return out


def answer(settings: Settings, items: list[Item], labelset: LabelSet, run_id: str,
           status: str = "done") -> None:
    """What a worker writes for these items (the worker's own database call)."""
    write_results(engine_for(settings.database_url), [
        Result(item=i, model=settings.model, labelset_id=labelset.id, run_id=run_id,
               labels=[{"label": labelset.labels[0], "score": 1.0}] if status == "done" else [],
               reason=None if status == "done" else Reason.NOT_FOUND) for i in items])


def catalogue(n: int, version: str = "v1") -> list[Item]:
    return [Item(uri=f"s3://shop/{i}.jpg", key=str(i), version=version) for i in range(n)]


def test_messages_carry_keys_versions_and_the_run(settings: Settings):
    items = catalogue(10)
    summary = run(settings, [*items[:5], NOT_IMAGE, *items[5:]])
    assert (summary.listed, summary.enqueued, summary.skipped, summary.chunks) == (11, 10, 1, 3)
    sent = messages(settings)
    assert [len(m["items"]) for m in sent] == [4, 4, 2]
    assert sent[0]["items"][0] == {"uri": "s3://shop/0.jpg", "key": "0", "version": "v1"}
    assert {m["labelset_id"] for m in sent} == {FLAT.id}
    assert {m["run_id"] for m in sent} == {summary.run_id}


def test_in_flight_images_are_not_enqueued_twice(settings: Settings):
    items = catalogue(10)
    first = run(settings, items)
    second = run(settings, items)  # the next night starts while no worker has answered yet
    assert (first.enqueued, second.enqueued, second.skipped) == (10, 0, 10)
    assert len(messages(settings)) == 3
    answer(settings, items, FLAT, first.run_id)
    with engine_for(settings.database_url).connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(pending)) == 0
    # Answered at the same version: still nothing due.
    assert run(settings, items).enqueued == 0


def test_only_changed_images_are_due_and_force_retags_all(settings: Settings):
    items = catalogue(6)
    first = run(settings, items)
    answer(settings, items, FLAT, first.run_id)
    messages(settings)
    changed = [*items[:2], Item(uri=items[2].uri, key="2", version="v2"), *items[3:]]
    again = run(settings, changed)
    assert (again.enqueued, again.skipped) == (1, 5)
    assert [m["items"] for m in messages(settings)] == [[{"uri": items[2].uri, "key": "2",
                                                          "version": "v2"}]]
    forced = run(settings, changed, force=True)
    assert forced.enqueued == 6


def test_failed_results_are_not_retried_by_a_nightly_run(settings: Settings):
    items = catalogue(3)
    first = run(settings, items)
    answer(settings, items[:1], FLAT, first.run_id, status="failed")
    answer(settings, items[1:], FLAT, first.run_id)
    assert run(settings, items).enqueued == 0  # retry-failed is the way to retry them


def test_new_model_or_label_set_makes_everything_due(settings: Settings):
    items = catalogue(5)
    first = run(settings, items)
    answer(settings, items, FLAT, first.run_id)
    assert run(settings, items).enqueued == 0
    assert run(settings, items, labelset=TWO_LEVEL).enqueued == 5
    other_model = load_settings({"CELERY_BROKER_URL": REDIS_URL,
                                 "DATABASE_URL": settings.database_url,
                                 "TAGGER_QUEUE": settings.queue, "TAGGER_MODEL": "model-b"})
    assert run(other_model, items).enqueued == 5
    with engine_for(settings.database_url).connect() as conn:
        kept = conn.execute(sa.select(results.c.model, results.c.labelset_id,
                                      sa.func.count()).group_by(results.c.model,
                                                                results.c.labelset_id)).all()
    assert kept == [("model-a", FLAT.id, 5)]  # the old results stay queryable


def test_the_same_url_twice_is_sent_once(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(enqueuing, "LOOKUP_BATCH", 3)
    shared = Item(uri="https://img.example.com/shared.jpg", key="1")
    items = [shared, Item(uri=shared.uri, key="2"), Item(uri="https://x.example/3.jpg", key="3"),
             Item(uri=shared.uri, key="4")]  # the fourth lands in the next lookup batch
    summary = run(settings, items)
    assert (summary.enqueued, summary.skipped) == (2, 2)
    forced = run(settings, items, force=True)
    assert (forced.enqueued, forced.skipped) == (2, 2)


def test_stale_pending_marks_are_taken_over(settings: Settings):
    items = catalogue(4)
    first = run(settings, items)
    messages(settings)  # the messages are lost (say, the broker's data was wiped)
    assert run(settings, items).enqueued == 0
    with engine_for(settings.database_url).begin() as conn:
        conn.execute(pending.update().where(pending.c.uri == items[0].uri).values(
            enqueued_at=datetime.now(UTC) - timedelta(seconds=settings.pending_ttl + 1)))
    retry = run(settings, items)
    assert retry.enqueued == 1
    with engine_for(settings.database_url).connect() as conn:
        owners = dict(conn.execute(sa.select(pending.c.uri, pending.c.run_id)).all())
    assert owners[items[0].uri] == retry.run_id and owners[items[1].uri] == first.run_id


def test_runs_are_recorded_with_counts(settings: Settings):
    items = catalogue(6)
    first = run(settings, [*items, NOT_IMAGE])
    second = run(settings, items[:3])
    answer(settings, items[:4], FLAT, first.run_id)
    answer(settings, items[4:5], FLAT, first.run_id, status="failed")
    engine = engine_for(settings.database_url)
    info = run_info(settings, first.run_id)
    assert {k: info[k] for k in ("listed", "enqueued", "skipped", "done", "failed", "pending",
                                 "state", "source", "model", "labelset_id")} == {
        "listed": 7, "enqueued": 6, "skipped": 1, "done": 4, "failed": 1, "pending": 1,
        "state": "running", "source": "test", "model": "model-a", "labelset_id": FLAT.id}
    assert info["finished_at"] >= info["started_at"]
    latest = db_status.find_runs(engine, limit=5)
    assert [r["id"] for r in latest] == [second.run_id, first.run_id]
    assert (latest[0]["skipped"], latest[0]["state"]) == (3, "complete")
    counts = db_status.result_counts(engine, first.run_id)
    assert (counts["done"], counts["failed"], counts["pending"]) == (4, 1, 1)
    assert counts["images_per_second"] > 0


def test_a_listing_that_breaks_keeps_its_counts_and_frees_its_claims(
        settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(enqueuing, "LOOKUP_BATCH", 3)

    def broken() -> Iterator[Item]:
        yield from catalogue(6)
        raise SourceError("catalogue connection lost")

    with pytest.raises(SourceError):
        run(settings, broken())
    engine = engine_for(settings.database_url)
    with engine.connect() as conn:
        row = conn.execute(sa.select(runs)).one()
        waiting = conn.scalar(sa.select(sa.func.count()).select_from(pending))
    # 4 were sent (one chunk); the 2 claimed but unsent are free for the next run.
    assert (row.listed, row.enqueued, waiting) == (6, 4, 4)
    # The listing ended, early: the run is stopped (with why), not listing for ever.
    assert row.finished_at is not None and row.error == "catalogue connection lost"
    info = run_info(settings, row.id)
    assert info["state"] == "stopped" and info["pending"] == 4
    assert run(settings, catalogue(6)).enqueued == 2


def test_unusable_urls_are_skipped_with_their_reasons(settings: Settings):
    nul = Item(uri="https://img.example.com/a\0.jpg", key="nul")
    huge = Item(uri="https://img.example.com/" + "x" * 20_000 + ".jpg", key="huge")
    presigned = Item(uri="https://img.example.com/p.jpg?X-Amz-Signature=" + "a" * 3000,
                     key="presigned")
    assert 3000 < len(presigned.uri) < MAX_URI_CHARS < len(huge.uri)
    good = catalogue(3)
    summary = run(settings, [good[0], nul, huge, good[1], presigned, good[2],
                             Skipped(Skip.NO_URL, "key 7"), Item("ftp://x/1.jpg", key="ftp")])
    assert (summary.listed, summary.enqueued, summary.skipped) == (8, 4, 4)
    assert dict(summary.skipped_by_reason) == {"bad-uri": 2, "uri-too-long": 1, "no-url": 1}
    sent = [i["key"] for m in messages(settings) for i in m["items"]]
    assert sent == ["0", "1", "presigned", "2"]
    info = run_info(settings, summary.run_id)
    assert info["skipped_by_reason"] == {"bad-uri": 2, "uri-too-long": 1, "no-url": 1}
    assert (info["skipped"], info["pending"], info["state"]) == (4, 4, "running")


def test_dry_run_sends_and_records_nothing(settings: Settings):
    shown: list[Item] = []
    summary = run(settings, catalogue(3), dry_run=True, show_due=shown.append)
    assert (summary.enqueued, len(shown)) == (3, 3)
    assert messages(settings) == []
    with engine_for(settings.database_url).connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(runs)) == 0


def test_runs_and_status_commands(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    for name, value in (("CELERY_BROKER_URL", REDIS_URL), ("DATABASE_URL", settings.database_url),
                        ("TAGGER_QUEUE", settings.queue), ("TAGGER_MODEL", settings.model)):
        monkeypatch.setenv(name, value)
    summary = run(settings, catalogue(5))
    listed = CliRunner().invoke(main, ["runs"])
    assert listed.exit_code == 0, listed.output
    assert f"run {summary.run_id} [running] test" in listed.output
    assert "listed 5, enqueued 5, skipped 0\n  done 0, failed 0, pending 5" in listed.output
    status = json.loads(CliRunner().invoke(main, ["status", "--run", summary.run_id,
                                                  "--json"]).output)
    assert (status["queue_depth"], status["pending"], status["run"]["id"]) == (
        2, 5, summary.run_id)
    missing = CliRunner().invoke(main, ["status", "--run", "no-such-run"])
    assert missing.exit_code == 1 and "no run no-such-run" in missing.output


def test_a_withdrawn_run_leaves_the_redis_queue(settings: Settings):
    first = run(settings, catalogue(8))  # two chunks
    items = [Item(uri=f"s3://shop/other-{i}.jpg") for i in range(3)]
    second = run(settings, items)
    assert sending.withdraw(settings, first.run_id) == 2
    assert [m["run_id"] for m in messages(settings)] == [second.run_id]  # the other run's stays


def test_a_withdrawn_run_leaves_the_embedded_queue(tmp_path: Path, sqlite_url: str):
    settings = load_settings({"TAGGER_HOME": str(tmp_path / "home"), "DATABASE_URL": sqlite_url,
                              "TAGGER_MODEL": "model-a"})
    first, second = run(settings, catalogue(8)), run(settings, catalogue(12)[8:])
    queue = tmp_path / "home" / "broker" / "queue"
    assert len(list(queue.glob("*.msg"))) == 3
    assert sending.withdraw(settings, first.run_id) == 2
    (left,) = queue.glob("*.msg")
    assert second.run_id in left.read_text()


def test_a_folder_has_one_identity_however_it_is_spelled(settings: Settings, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    photos = tmp_path / "shop" / "photos"
    photos.mkdir(parents=True)
    for name in ("a.jpg", "b.png"):
        (photos / name).write_bytes(b"image bytes")
    (tmp_path / "alias").symlink_to(tmp_path / "shop", target_is_directory=True)
    monkeypatch.chdir(tmp_path / "shop")

    def tag(location: str) -> enqueuing.Summary:
        listing = enqueuing.locate(location, settings)
        return run(settings, listing.entries, file_roots=listing.file_roots)

    first = tag("photos")
    assert first.enqueued == 2
    spellings = ["../shop/photos", "./photos/.", "photos/", str(tmp_path / "alias" / "photos"),
                 f"file://{tmp_path}/alias/../shop/photos/"]
    for spelling in spellings:  # in flight under the same identity: not sent again
        assert tag(spelling).skipped_by_reason == {"in-flight": 2}, spelling
    answer(settings, list(enqueuing.locate("photos", settings).entries), FLAT, first.run_id)
    for spelling in spellings:  # the results under the canonical URIs are reused
        assert tag(spelling).skipped_by_reason == {"done": 2}, spelling
