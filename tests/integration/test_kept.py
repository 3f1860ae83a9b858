"""Kept embeddings on real databases: written with the results, found by the nightly due check,
scored from without a fetch, and relabelled in ranges."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from testkit.commands import count
from testkit.images import image_bytes
from testkit.models import TEST_LABELS, FakeBackend, stored_model
from worker.backends.torch_clip import TorchBackend
from worker.core.contract import KEPT_RUNTIME, Chunk, Item, Result, Span
from worker.core.embedding import KEY_MAX, KEY_MIN, sha256_of, spans
from worker.core.labels import LabelSet
from worker.core.settings import Settings, load_settings
from worker.db import embeddings, labelsets, models, writes
from worker.db import runs as producer_db
from worker.db import status as db_status
from worker.db.schema import engine_for, results
from worker.handlers.chunks import results_of, run_chunk, write
from worker.handlers.relabel import relabel
from worker.loop.assemble import Parts, assemble
from worker.loop.scores import top_labels
from worker.sinks.database import DatabaseSink

FIRST = LabelSet(labels=tuple(TEST_LABELS), parents=(None,) * len(TEST_LABELS))
SECOND = LabelSet(labels=("桌子", "猫", "狗", "椅子"), parents=("家居", None, None, "家居"))


def make_settings(url: str, root: Path, **extra: str) -> Settings:
    return load_settings({"DATABASE_URL": url, "TAGGER_HOME": str(root / "home"),
                          "TAGGER_FILE_ROOTS": str(root), "TAGGER_TOP_K": "3",
                          "TAGGER_FETCH_THREADS": "2", "TAGGER_DECODE_PROCESSES": "1",
                          "TAGGER_PRECISION": "float32", "TAGGER_DEVICE": "cpu",
                          "TAGGER_BATCH_SIZE": "4", "TAGGER_MODEL": "m", **extra})


@pytest.fixture(params=["sqlite_url", "pg_url"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


def worker_parts(made: list[Parts], settings: Settings, tmp_path: Path, backend: object = None
                 ) -> Parts:
    parts = assemble(settings, tmp_path, backend=backend or FakeBackend())  # type: ignore
    for labelset in (FIRST, SECOND):
        labelsets.save_labelset(parts.engine, labelset)
    made.append(parts)
    return parts


def files(folder: Path, count: int) -> list[Path]:
    paths = [folder / f"img-{i}.png" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(image_bytes(i))
    return paths


def chunk(parts: Parts, items: Sequence[Item], labelset: LabelSet, run_id: str = "r1") -> Chunk:
    return Chunk(items=tuple(items), model=parts.model, labelset_id=labelset.id, run_id=run_id)


def stored(engine: sa.Engine, labelset: LabelSet) -> dict[str, sa.Row]:
    with engine.connect() as conn:
        return {r.uri: r for r in conn.execute(sa.select(results).where(
            results.c.labelset_id == labelset.id))}


# --- written with the results ------------------------------------------------------------------

def test_the_embeddings_computed_are_kept_exactly_with_their_results(url, tmp_path, made,
                                                                    tiny_model):
    settings = make_settings(url, tmp_path, TAGGER_MODEL=str(tiny_model))
    parts = worker_parts(made, settings, tmp_path, TorchBackend(settings, tiny_model))
    items = [Item(str(p)) for p in files(tmp_path, 5)]
    request = chunk(parts, [*items, Item(str(tmp_path / "gone.png"))], FIRST)
    works, _ = parts.tagger.tag(request.items, parts.labels.get(FIRST.id), (tmp_path,), False)
    write(parts, results_of(works, request, "torch float32 cpu", 1), "t1")
    computed = {w.sha256: w.embedding for w in works if w.embedding is not None}
    assert len(computed) == 5  # the missing file has none
    kept = embeddings.lookup(parts.engine, parts.served, computed)
    assert kept.keys() == computed.keys()
    for sha, vector in computed.items():
        assert kept[sha].dtype == np.float16 and np.array_equal(kept[sha],
                                                                vector.astype(np.float16))


def test_embeddings_are_kept_in_the_results_transaction_or_not_at_all(url, tmp_path):
    engine = engine_for(url)
    vector = np.ones(8, np.float32) / np.sqrt(8)
    good = Result(Item("s3://b/1.jpg"), "m", "ls", content_sha256="ab" * 32, embedding=vector,
                  labels=[{"label": "猫", "score": 0.9}])
    broken = Result(Item("s3://b/2.jpg"), "m", "ls", content_sha256="not hex" * 9,
                    embedding=vector, labels=[{"label": "猫", "score": 0.9}])
    with pytest.raises(ValueError):
        writes.write_results(engine, [good, broken], keep_embeddings=True)
    assert (count(url), count(url, "embeddings")) == (0, 0)
    DatabaseSink(make_settings(url, tmp_path, TAGGER_KEEP_EMBEDDINGS="0")).write([good])
    assert (count(url), count(url, "embeddings")) == (1, 0)
    for _ in range(2):  # idempotent
        DatabaseSink(make_settings(url, tmp_path)).write([good])
    assert (count(url), count(url, "embeddings")) == (1, 1)
    models.forget()  # as another process sees them: the model's id was committed
    assert list(embeddings.lookup(engine, stored_model(engine), ["ab" * 32, "cd" * 32])) == [
        "ab" * 32]


# --- the nightly due check and the worker's loop ---------------------------------------------

def test_the_due_check_sends_the_content_of_the_same_version(url):
    engine = engine_for(url)
    kept = np.ones(8, np.float32) / np.sqrt(8)
    writes.write_results(engine, [
        Result(Item(f"s3://b/{n}.jpg", version="v1"), "m", FIRST.id, content_sha256=content(n),
               labels=[{"label": "猫", "score": 0.9}], embedding=None if n == 3 else kept)
        for n in (1, 2, 3)], keep_embeddings=True)
    listed = [Item("s3://b/1.jpg", version="v1"), Item("s3://b/2.jpg", version="v2"),
              Item("s3://b/3.jpg", version="v1"), Item("s3://b/4.jpg", version="v1")]
    model = stored_model(engine).id
    with engine.connect() as conn:
        due = producer_db.due_items(conn, listed, model, SECOND.id, use_kept=True).items
        # the same version; a new version; content not kept; never seen
        assert [i.sha256 for i in due] == [content(1), None, None, None]
        plain = producer_db.due_items(conn, listed, model, SECOND.id).items
        assert [i.sha256 for i in plain] == [None] * 4
        again = producer_db.due_items(conn, listed, model, FIRST.id, use_kept=True)
        assert again.items == [listed[1], listed[3]]  # its own label set: only what is new


def test_an_item_with_a_kept_embedding_is_scored_from_it_without_a_fetch(url, tmp_path, made):
    parts = worker_parts(made, make_settings(url, tmp_path), tmp_path)
    paths = files(tmp_path, 3)
    run_chunk(parts, chunk(parts, [Item(str(p)) for p in paths], FIRST), task_id="t1",
              chunk_retries=8)
    run_chunk(parts, chunk(parts, [Item(str(p)) for p in paths], SECOND), task_id="t2",
              chunk_retries=8)
    from_pixels = stored(parts.engine, SECOND)
    for path in paths:
        path.unlink()
    items = [Item(str(p), sha256=sha256_of(image_bytes(i))) for i, p in enumerate(paths)]
    report = run_chunk(parts, chunk(parts, items, SECOND, run_id="r2"), task_id="t3",
                       chunk_retries=8)
    assert (report.done, report.failed) == (3, 0)
    for uri, row in stored(parts.engine, SECOND).items():
        assert (row.runtime, row.run_id) == (KEPT_RUNTIME, "r2")
        assert [e["label"] for e in row.labels] == [e["label"] for e in from_pixels[uri].labels]
        for kept, pixels in zip(row.labels, from_pixels[uri].labels, strict=True):
            assert kept["score"] == pytest.approx(pixels["score"], abs=0.01)
    with parts.engine.begin() as conn:  # the embedding is gone since: the image is fetched
        conn.execute(embeddings.embeddings.delete())
    gone = Item(str(tmp_path / "new.png"), sha256=items[0].sha256)
    report = run_chunk(parts, chunk(parts, [gone], SECOND, run_id="r3"), task_id="t4",
                       chunk_retries=8)
    assert stored(parts.engine, SECOND)[gone.uri].reason == "not-found"


# --- relabel ranges ----------------------------------------------------------------------------

def content(n: int) -> str:
    return sha256_of(str(n).encode())


def seed(engine: sa.Engine, count: int, dim: int = 8, labelset: str = FIRST.id,
         run_id: str = "r1", first: int = 0) -> dict[str, np.ndarray]:
    """Done results with kept embeddings; returns the embeddings by content."""
    rng = np.random.default_rng(first)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    outcomes = [Result(Item(f"s3://b/{n}.jpg", key=f"k{n}", version=f"v{n}"), "m", labelset,
                       run_id=run_id, content_sha256=content(n), embedding=vector,
                       labels=[{"label": "猫", "score": 0.9}])
                for n, vector in zip(range(first, first + count), vectors, strict=True)]
    writes.write_results(engine, outcomes, keep_embeddings=True)
    return {o.content_sha256 or "": o.embedding for o in outcomes}


def relabel_run(parts: Parts, run_id: str, parts_count: int = 3, scope_run: str | None = None
                ) -> list[Span]:
    spans_ = [Span("m", SECOND.id, run_id, lo, hi, scope_run) for lo, hi in spans(parts_count)]
    producer_db.create_run(parts.engine, run_id, "relabel", "m", SECOND.id)
    producer_db.add_pending_ranges(parts.engine, spans_, [10] * len(spans_))
    producer_db.update_run(parts.engine, run_id, finished=True)
    return spans_


def test_a_relabel_run_scores_every_kept_embedding_once(url, tmp_path, made):
    parts = worker_parts(made, make_settings(url, tmp_path), tmp_path)
    vectors = seed(parts.engine, 30)
    spans_ = relabel_run(parts, "rl1")
    assert db_status.result_counts(parts.engine, "rl1")["pending"] == 30
    reports = [relabel(parts, span, f"task-{i}") for i, span in enumerate(spans_)]
    assert sum(r["images"] for r in reports) == 30 and reports[0]["wall"]["score"] >= 0
    assert db_status.find_runs(parts.engine, "rl1")[0]["state"] == "complete"
    rows = stored(parts.engine, SECOND)
    assert len(rows) == 30
    scoring = parts.labels.get(SECOND.id)
    expected = top_labels(np.stack([vectors[r.content_sha256] for r in rows.values()]).astype(
        np.float16), SECOND, scoring.texts, parts.tagger.backend.logit_scale, 3)
    for row, labels in zip(rows.values(), expected, strict=True):
        n = int(row.item_key[1:])
        assert (row.item_key, row.source_version, row.run_id, row.status, row.runtime) == (
            f"k{n}", f"v{n}", "rl1", "done", KEPT_RUNTIME)
        assert row.labels == labels and row.top_label == labels[0]["label"]
    relabel(parts, spans_[0], "task-0")  # a re-delivered range writes the same rows again
    again = stored(parts.engine, SECOND)
    assert {u: (r.id, r.labels) for u, r in again.items()} == {
        u: (r.id, r.labels) for u, r in rows.items()}


def test_relabel_takes_each_image_at_its_newest_content_and_keeps_to_a_run(url, tmp_path,
                                                                        made):
    parts = worker_parts(made, make_settings(url, tmp_path), tmp_path)
    seed(parts.engine, 4)
    # Image 0 changed since: a later run of another label set saw new content at a new version.
    newer = Result(Item("s3://b/0.jpg", key="k0", version="v0-new"), "m", "other", run_id="r9",
                   content_sha256=content(99), embedding=np.ones(8, np.float32) / np.sqrt(8),
                   labels=[{"label": "猫", "score": 0.9}])
    writes.write_results(parts.engine, [newer], keep_embeddings=True)
    seed(parts.engine, 2, run_id="r2", first=10)
    for span in relabel_run(parts, "rl1", 2):
        relabel(parts, span, f"a-{span.lo}")
    rows = stored(parts.engine, SECOND)
    assert len(rows) == 6
    assert (rows["s3://b/0.jpg"].content_sha256, rows["s3://b/0.jpg"].source_version) == (
        content(99), "v0-new")
    for span in relabel_run(parts, "rl2", 1, scope_run="r2"):
        assert relabel(parts, span, "b")["images"] == 2
    assert {u for u, r in stored(parts.engine, SECOND).items() if r.run_id == "rl2"} == {
        "s3://b/10.jpg", "s3://b/11.jpg"}


def test_a_range_that_cannot_be_scored_stops_its_run(url, tmp_path, made):
    parts = worker_parts(made, make_settings(url, tmp_path), tmp_path)
    seed(parts.engine, 3)
    span = relabel_run(parts, "rl1", 1)[0]
    other = Span("another-model", span.labelset_id, span.run_id, KEY_MIN, KEY_MAX)
    assert "another-model" in relabel(parts, other, "t1")["error"]
    run = db_status.find_runs(parts.engine, "rl1")[0]
    assert (run["state"], run["pending"], run["done"]) == ("stopped", 0, 0)
    assert "TAGGER_MODEL" in run["error"]


def test_contents_whose_keys_collide_keep_the_first_embedding_only(url):
    # Two hashes that share their first 8 bytes (a pair among 10^7 images: 1 in 370,000): the
    # second content is not kept, and is never scored from the first one's embedding.
    engine = engine_for(url)
    first, second = "00" * 8 + "11" * 24, "00" * 8 + "22" * 24
    vectors = np.eye(2, 8, dtype=np.float32)
    writes.write_results(engine, [
        Result(Item(f"s3://b/{i}.jpg"), "m", "ls", content_sha256=sha, embedding=vector,
               labels=[{"label": "猫", "score": 0.9}])
        for i, (sha, vector) in enumerate(zip((first, second), vectors, strict=True))],
        keep_embeddings=True)
    kept = embeddings.lookup(engine, stored_model(engine), [first, second])
    assert list(kept) == [first] and np.array_equal(kept[first], vectors[0].astype(np.float16))
    found = [row.content_sha256 for rows, _, _ in embeddings.read_images(
        engine, embeddings.Scope(stored_model(engine))) for row in rows]
    assert found == [first]


def test_a_relabel_writes_every_character_as_it_came(url, tmp_path, made):
    # PostgreSQL takes a relabel's rows as COPY text, with the columns a range shares rendered
    # once: escapes and braces in any column must come back exactly.
    parts = worker_parts(made, make_settings(url, tmp_path), tmp_path)
    odd = "tab\there, line\nbreak, cr\r, back\\slash \\N, braces {0} {}"
    uri = "s3://b/odd {0}\\x.jpg"
    writes.write_results(parts.engine, [Result(
        Item(uri, key=odd, version=odd), "m", FIRST.id, content_sha256=content(1),
        embedding=np.ones(8, np.float32) / np.sqrt(8), labels=[{"label": "猫", "score": 0.9}])],
        keep_embeddings=True)
    hostile = LabelSet(labels=("猫\\{0}", "狗\t{}"), parents=("家\\居", None))
    labelsets.save_labelset(parts.engine, hostile)
    span = Span("m", hostile.id, "rl1", KEY_MIN, KEY_MAX)
    producer_db.create_run(parts.engine, "rl1", "relabel", "m", hostile.id)
    assert relabel(parts, span, "t1")["images"] == 1
    row = stored(parts.engine, hostile)[uri]
    assert (row.item_key, row.source_version, row.run_id) == (odd, odd, "rl1")
    assert {(e["label"], e.get("parent")) for e in row.labels} == {("猫\\{0}", "家\\居"),
                                                                  ("狗\t{}", None)}
    assert row.top_label in {"猫\\{0}", "狗\t{}"}


class SeenSink:
    """A second sink (a topic, an index): what it is given, and what the database held then."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.seen: list[Result] = []
        self.stored_before: list[int] = []

    def write(self, results: Collection[Result], task_id: str | None = None) -> None:
        self.stored_before.append(len(stored(self.engine, SECOND)))
        self.seen.extend(results)


def test_a_relabel_hands_every_result_to_every_sink_after_the_database(url, tmp_path, made):
    parts = worker_parts(made, make_settings(url, tmp_path), tmp_path)
    seed(parts.engine, 12)
    sink = SeenSink(parts.engine)
    parts.sinks.append(sink)
    spans_ = relabel_run(parts, "rl-sinks", parts_count=2)
    assert sum(relabel(parts, span, f"t{i}")["images"] for i, span in enumerate(spans_)) == 12
    rows = stored(parts.engine, SECOND)
    assert {r.item.uri: (r.labels, r.status, r.runtime, r.run_id, r.labelset_id, r.identity)
            for r in sink.seen} == {
        uri: (row.labels, "done", KEPT_RUNTIME, "rl-sinks", SECOND.id, "m")
        for uri, row in rows.items()}
    assert len(sink.seen) == 12 and sink.stored_before[-1] == 12  # the database committed first
