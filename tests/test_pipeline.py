"""The chunk loop without Celery: failures as data, delivery counting, parking."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import TEST_LABELS, direct_scores, image_bytes
from worker import pipeline, store
from worker.errors import TransientError
from worker.labels import LabelSet
from worker.model import Scorer
from worker.settings import load_settings

LABELSET = LabelSet(labels=tuple(TEST_LABELS), parents=("家居", "家居", "家居", "家居", None, None))


@pytest.fixture
def tagger(tiny_model, sqlite_url, tmp_path) -> pipeline.Tagger:
    settings = load_settings({"DATABASE_URL": sqlite_url, "TAGGER_MODEL": str(tiny_model),
                              "TAGGER_HOME": str(tmp_path), "TAGGER_TOP_K": "3",
                              "TAGGER_MAX_DELIVERIES": "2", "TAGGER_DECODE_THREADS": "2"})
    scorer = Scorer(settings.model, "cpu", "float32", batch_size=2)
    tagger = pipeline.Tagger(settings, scorer)
    store.save_labelset(tagger.engine, LABELSET)
    return tagger


def stored(tagger: pipeline.Tagger) -> dict[str, sa.Row]:
    with tagger.engine.connect() as conn:
        return {r.uri: r for r in conn.execute(sa.select(store.results))}


def test_a_broken_image_never_fails_its_neighbours(tagger, tmp_path: Path, tiny_model):
    good = [image_bytes(i) for i in range(5)]
    for i, data in enumerate(good):
        (tmp_path / f"{i}.png").write_bytes(data)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    items = [{"uri": str(tmp_path / f"{i}.png"), "key": f"sku-{i}"} for i in range(5)]
    items[2:2] = [{"uri": str(tmp_path / "bad.jpg")}, {"uri": str(tmp_path / "gone.png")}]
    report = pipeline.run_chunk(tagger, task_id="t1", items=items, labelset_id=LABELSET.id,
                                run_id="run", retries=0, final=False)
    assert (report.done, report.failed) == (5, 2)
    rows = stored(tagger)
    assert (rows[str(tmp_path / "bad.jpg")].reason, rows[str(tmp_path / "gone.png")].reason) == (
        "undecodable", "not-found")
    truth = direct_scores(tiny_model, TEST_LABELS, good)
    for i, expected in enumerate(truth):
        row = rows[str(tmp_path / f"{i}.png")]
        assert row.item_key == f"sku-{i}" and row.attempts == 1 and row.run_id == "run"
        assert [e["label"] for e in row.labels] == sorted(expected, key=expected.get,
                                                          reverse=True)[:3]
        for entry in row.labels:
            assert entry["score"] == pytest.approx(expected[entry["label"]], abs=1e-4)
            index = TEST_LABELS.index(entry["label"])
            assert entry.get("parent") == LABELSET.parents[index]


def test_redelivery_counts_attempts_and_parks_a_poison_chunk(tagger, tmp_path: Path):
    (tmp_path / "a.png").write_bytes(image_bytes(1))
    items = [{"uri": str(tmp_path / "a.png")}]
    kwargs = {"items": items, "labelset_id": LABELSET.id, "run_id": None, "final": False}
    pipeline.run_chunk(tagger, task_id="t2", retries=0, **kwargs)
    pipeline.run_chunk(tagger, task_id="t2", retries=0, **kwargs)
    assert stored(tagger)[items[0]["uri"]].attempts == 2
    # Starts caused by our own retries are not deaths: still tagged normally.
    report = pipeline.run_chunk(tagger, task_id="t2", retries=1, **kwargs)
    assert not report.parked
    report = pipeline.run_chunk(tagger, task_id="t2", retries=0, **kwargs)
    assert report.parked and report.failed == 1
    row = stored(tagger)[items[0]["uri"]]
    # A parked delivery is a failure, and a failure never replaces the earlier done result.
    assert row.status == "done"
    report = pipeline.run_chunk(tagger, task_id="t3", retries=0, **kwargs | {
        "items": [{"uri": str(tmp_path / "new.png")}]})
    assert report.failed == 1


def test_parked_items_are_failed_with_a_reason(tagger, tmp_path: Path):
    items = [{"uri": str(tmp_path / f"{i}.png")} for i in range(3)]
    for _ in range(3):
        store.count_delivery(tagger.engine, "poison")
    report = pipeline.run_chunk(tagger, task_id="poison", items=items, labelset_id=LABELSET.id,
                                run_id="r", retries=0, final=False)
    assert report.parked
    rows = stored(tagger)
    assert {r.reason for r in rows.values()} == {"parked"}
    assert all("retry-failed" in r.error for r in rows.values())


def test_unknown_label_set_is_transient(tagger):
    with pytest.raises(TransientError, match="not in the database"):
        tagger.labelset("0000000000000000")


def test_transient_fetch_errors_become_failures_on_the_final_attempt(tagger):
    item = {"uri": "https://127.0.0.1:1/never.jpg"}
    tagger.settings = load_settings({"TAGGER_ALLOW_PRIVATE_URLS": "1",
                                     "TAGGER_FETCH_TIMEOUT": "1",
                                     "DATABASE_URL": tagger.settings.database_url})
    with pytest.raises(TransientError):
        tagger.prepare(item, final=False)
    prepared = tagger.prepare(item, final=True)
    assert prepared.error is not None and prepared.error.reason == "transient"
