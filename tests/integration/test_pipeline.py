"""The chunk loop without Celery: real decoding, failures as data, delivery counting, parking."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from testkit.images import image_bytes, scan_bomb
from testkit.models import TEST_LABELS, FakeBackend, direct_scores
from worker.backends import Backend
from worker.backends.torch_clip import TorchBackend
from worker.core.contract import Chunk, Item
from worker.core.labels import LabelSet
from worker.core.settings import Settings, load_settings
from worker.db import labelsets
from worker.db import runs as runs_db
from worker.db import status as db_status
from worker.db import writes as worker_db
from worker.db.schema import deliveries, results
from worker.handlers.chunks import ChunkReport, RetryItems, run_chunk
from worker.loop.assemble import Parts, assemble

LABELSET = LabelSet(labels=tuple(TEST_LABELS), parents=("家居", "家居", "家居", "家居", None, None))


def make_settings(database_url: str, root: Path, **extra: str) -> Settings:
    return load_settings({"DATABASE_URL": database_url, "TAGGER_HOME": str(root / "home"),
                          "TAGGER_FILE_ROOTS": str(root), "TAGGER_TOP_K": "3",
                          "TAGGER_MAX_DELIVERIES": "2",
                          "TAGGER_DECODE_PROCESSES": "2", "TAGGER_PRECISION": "float32",
                          "TAGGER_DEVICE": "cpu", "TAGGER_BATCH_SIZE": "2", **extra})


@pytest.fixture
def settings(sqlite_url: str, tiny_model: Path, tmp_path: Path) -> Settings:
    return make_settings(sqlite_url, tmp_path, TAGGER_MODEL=str(tiny_model))


@pytest.fixture
def start(made: list[Parts], tmp_path: Path):
    """A worker's parts as assembled from settings (real Pillow decoder processes), with the
    given backend."""
    def make(settings: Settings, backend: Backend) -> Parts:
        parts = assemble(settings, tmp_path, backend=backend)
        labelsets.save_labelset(parts.engine, LABELSET)
        made.append(parts)
        return parts
    return make


@pytest.fixture
def tagger(start, settings: Settings, tiny_model: Path) -> Parts:
    return start(settings, TorchBackend(settings, tiny_model))


@pytest.fixture
def fake(start, settings: Settings) -> Parts:
    return start(settings, FakeBackend())


def chunk(uris: Sequence[str | Item], labelset_id: str = LABELSET.id, run_id: str | None = "run",
          model: str | None = None, settings: Settings | None = None) -> Chunk:
    items = tuple(u if isinstance(u, Item) else Item(u) for u in uris)
    return Chunk(items=items, model=model or (settings.model if settings else ""),
                 labelset_id=labelset_id, run_id=run_id)


def tag(parts: Parts, uris: Sequence[str | Item], task_id: str = "t1", chunk_retries: int = 8,
        **options: str | None) -> ChunkReport:
    """One start of a chunk message; ``chunk_retries=0``: its last try."""
    options.setdefault("model", parts.model)
    return run_chunk(parts, chunk(uris, **options), task_id=task_id, chunk_retries=chunk_retries)


def stored(parts: Parts) -> dict[str, sa.Row]:
    with parts.engine.connect() as conn:
        return {r.uri: r for r in conn.execute(sa.select(results))}


def files(folder: Path, seeds: Sequence[int], prefix: str = "img") -> list[str]:
    uris = []
    for i, seed in enumerate(seeds):
        path = folder / f"{prefix}-{i}.png"
        path.write_bytes(image_bytes(seed))
        uris.append(str(path))
    return uris


# --- the real model on the tiny checkpoint ---------------------------------------------------

def test_a_broken_image_never_fails_its_neighbours(tagger, tmp_path: Path, tiny_model):
    good = [image_bytes(i) for i in range(5)]
    for i, data in enumerate(good):
        (tmp_path / f"{i}.png").write_bytes(data)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    items = [Item(str(tmp_path / f"{i}.png"), key=f"sku-{i}") for i in range(5)]
    items[2:2] = [Item(str(tmp_path / "bad.jpg")), Item(str(tmp_path / "gone.png"))]
    report = tag(tagger, items)
    assert (report.done, report.failed, report.parked) == (5, 2, None)
    rows = stored(tagger)
    bad, gone = rows[str(tmp_path / "bad.jpg")], rows[str(tmp_path / "gone.png")]
    assert (bad.reason, gone.reason) == ("undecodable", "not-found")
    assert bad.runtime is None and bad.labels == []
    truth = direct_scores(tiny_model, TEST_LABELS, good)
    for i, expected in enumerate(truth):
        row = rows[str(tmp_path / f"{i}.png")]
        assert row.item_key == f"sku-{i}" and row.attempts == 1 and row.run_id == "run"
        assert row.runtime == "torch float32 cpu"
        assert [e["label"] for e in row.labels] == sorted(expected, key=expected.get,
                                                          reverse=True)[:3]
        for entry in row.labels:
            assert entry["score"] == pytest.approx(expected[entry["label"]], abs=1e-4)
            index = TEST_LABELS.index(entry["label"])
            assert entry.get("parent") == LABELSET.parents[index]


def test_redelivery_counts_attempts_and_parks_a_poison_chunk(tagger, tmp_path: Path):
    (tmp_path / "a.png").write_bytes(image_bytes(1))
    uris = [str(tmp_path / "a.png")]
    tag(tagger, uris, task_id="t2")
    tag(tagger, uris, task_id="t2")  # the first start died (say): one death
    assert stored(tagger)[uris[0]].attempts == 2
    # Starts caused by our own retries are not deaths: still tagged normally.
    assert worker_db.grant_retry(tagger.engine, "t2", limit=8) == 1
    report = tag(tagger, uris, task_id="t2")
    assert not report.parked and report.done == 1
    report = tag(tagger, uris, task_id="t2")  # two deaths: TAGGER_MAX_DELIVERIES here
    assert report.parked == "parked" and report.failed == 1
    row = stored(tagger)[uris[0]]
    # A parked delivery is a failure, and a failure never replaces the earlier done result.
    assert row.status == "done"
    report = tag(tagger, [str(tmp_path / "new.png")], task_id="t3")
    assert report.failed == 1 and not report.parked


def test_parked_items_are_failed_with_a_reason(tagger, tmp_path: Path):
    uris = [str(tmp_path / f"{i}.png") for i in range(3)]
    for _ in range(3):
        worker_db.start_delivery(tagger.engine, "poison", "r", 3)
    report = tag(tagger, uris, task_id="poison", run_id="r")
    assert report.parked == "parked" and report.failed == 3
    rows = stored(tagger)
    assert {r.reason for r in rows.values()} == {"parked"}
    assert all("retry-failed" in r.error and r.attempts == 4 for r in rows.values())


# --- the loop's own rules, on a fake model --------------------------------------------------

def test_a_chunk_for_another_model_is_parked_untouched(fake, tmp_path: Path):
    uris = files(tmp_path, [1, 2])
    report = tag(fake, uris, model="other/model")
    assert (report.parked, report.failed, report.done) == ("model-mismatch", 2, 0)
    rows = stored(fake)
    assert {(r.model, r.reason) for r in rows.values()} == {("other/model", "model-mismatch")}
    assert all("TAGGER_MODEL" in r.error for r in rows.values())
    assert fake.tagger.backend.batches == []  # nothing was scored with the wrong model
    with fake.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(deliveries)) == 0


def test_a_chunk_of_a_withdrawn_run_is_dropped_untouched(fake, tmp_path: Path):
    uris = files(tmp_path, [1, 2])
    runs_db.create_run(fake.engine, "gone", "test", fake.model, LABELSET.id)
    runs_db.cancel_run(fake.engine, "gone", "interrupted")
    with fake.engine.begin() as conn:  # a listing still running after `producer cancel`
        runs_db.claim_pending(conn, [Item(u) for u in uris], fake.model, LABELSET.id, "gone",
                              3600)
    report = tag(fake, uris, run_id="gone")
    assert (report.parked, report.done, report.failed) == ("withdrawn", 0, 0)
    assert stored(fake) == {} and fake.tagger.backend.batches == []  # no failure invented
    counts = db_status.result_counts(fake.engine, "gone")
    assert (counts["in_flight"], counts["pending"]) == (0, 0)  # its marks released too


def test_a_link_target_recorded_while_listing_is_read(fake, tmp_path: Path,
                                                       tmp_path_factory: pytest.TempPathFactory):
    outside = tmp_path_factory.mktemp("outside")  # not under TAGGER_FILE_ROOTS
    (outside / "real.png").write_bytes(image_bytes(5))
    (outside / "other.png").write_bytes(image_bytes(6))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "link.png").symlink_to(outside / "real.png")
    (folder / "sneaky.png").symlink_to(outside / "other.png")  # made after the listing
    runs_db.create_run(fake.engine, "r", "test", fake.model, LABELSET.id, [str(folder)])
    first = tag(fake, [str(folder / "link.png")], run_id="r", task_id="t1")
    assert first.failed == 1  # its target was not recorded (yet): outside the roots
    # The listing meets the link and records its target; the worker sees it at once.
    runs_db.add_file_roots(fake.engine, "r", [str((outside / "real.png").resolve())])
    assert tag(fake, [str(folder / "link.png")], run_id="r", task_id="t2").done == 1
    runs_db.update_run(fake.engine, "r", finished=True)
    assert tag(fake, [str(folder / "sneaky.png")], run_id="r", task_id="t3").failed == 1
    rows = stored(fake)
    assert (rows[str(folder / "link.png")].status, rows[str(folder / "sneaky.png")].reason) == (
        "done", "outside-roots")


def test_an_unknown_label_set_is_parked(fake, tmp_path: Path):
    uris = files(tmp_path, [1, 2])
    report = tag(fake, uris, labelset_id="0000000000000000")
    assert (report.parked, report.failed) == ("unknown-labelset", 2)
    rows = stored(fake)
    assert {r.reason for r in rows.values()} == {"unknown-labelset"}
    assert all("0000000000000000" in r.error for r in rows.values())
    assert tag(fake, uris).done == 2  # the worker goes on with known label sets


@pytest.mark.parametrize("database", ["sqlite_url", "pg_url"])
def test_a_malformed_uri_fails_only_its_item(start, tmp_path: Path, database: str,
                                            request: pytest.FixtureRequest):
    fake = start(make_settings(request.getfixturevalue(database), tmp_path), FakeBackend())
    good = files(tmp_path, [1, 2])
    bad = ["https://img.example.com:99999/a.jpg", "https://[::1/a.jpg",
           str(tmp_path / "a\0b.png"), "ftp://img.example.com/a.jpg"]
    report = tag(fake, [good[0], *bad, good[1]])
    assert (report.done, report.failed, report.parked) == (2, 4, None)
    rows = {r.item_key or r.uri: r for r in stored(fake).values()}
    assert {rows[u].status for u in good} == {"done"}
    failed = [r for r in rows.values() if r.status == "failed"]
    assert len(failed) == 4 and {r.reason for r in failed} == {"bad-uri"}


def test_a_transient_error_retries_its_item_alone_then_fails_it(start, settings, tmp_path):
    fake = start(make_settings(settings.database_url, tmp_path, TAGGER_ALLOW_PRIVATE_URLS="1",
                               TAGGER_FETCH_TIMEOUT="1"), FakeBackend())
    uris = ["https://127.0.0.1:1/never.jpg", *files(tmp_path, [1, 2])]
    with pytest.raises(RetryItems) as retry:
        tag(fake, uris, task_id="t1")
    # The neighbours are written now and never fetched again; only the failing item goes back.
    assert [i.uri for i in retry.value.items] == uris[:1]
    assert {u: r.status for u, r in stored(fake).items()} == {uris[1]: "done", uris[2]: "done"}
    report = tag(fake, retry.value.items, task_id="t1", chunk_retries=0)  # the last try
    assert (report.done, report.failed) == (0, 1)
    assert stored(fake)[uris[0]].reason == "transient"


@pytest.mark.timeout(120)
def test_a_decode_over_the_item_timeout_fails_only_its_item(start, settings, tmp_path: Path):
    fake = start(make_settings(settings.database_url, tmp_path, TAGGER_ITEM_TIMEOUT="1"),
                 FakeBackend(batch_size=4))
    bomb = tmp_path / "bomb.jpg"
    # ~4 s of decoding on this machine's cores, far less than a megabyte.
    bomb.write_bytes(scan_bomb(8192, 1000))
    uris = files(tmp_path, [1, 2, 3])
    report = tag(fake, [uris[0], str(bomb), uris[1]], task_id="t1")
    assert (report.done, report.failed) == (2, 1)
    row = stored(fake)[str(bomb)]
    # Stopped by the kernel's timer at the item's limit (the decode would have finished, and
    # the pool's patience would say "no answer"): TAGGER_ITEM_TIMEOUT names which one it was.
    assert row.reason == "timeout" and "TAGGER_ITEM_TIMEOUT" in row.error
    assert tag(fake, [uris[2]], task_id="t2").done == 1  # the next chunk, as usual


@pytest.mark.timeout(120)
def test_copies_of_one_content_end_alike_and_done_always_has_labels(start, settings, tmp_path):
    fake = start(make_settings(settings.database_url, tmp_path, TAGGER_ITEM_TIMEOUT="1"),
                 FakeBackend(batch_size=4))
    junk, bomb = tmp_path / "junk.jpg", tmp_path / "bomb.jpg"
    junk.write_bytes(b"a README saved as .jpg")
    bomb.write_bytes(scan_bomb(8192, 1000))  # seconds of decoding: over the 1 s limit
    uris = {"junk": [], "bomb": [], "good": files(tmp_path, [4, 4, 4], prefix="same")}
    for kind, source in (("junk", junk), ("bomb", bomb)):
        for i in range(3 if kind == "junk" else 6):
            copy = tmp_path / f"{kind}-{i}.jpg"
            copy.write_bytes(source.read_bytes())
            uris[kind].append(str(copy))
    report = tag(fake, [u for kind in ("bomb", "junk", "good") for u in uris[kind]])
    assert (report.done, report.failed) == (3, 9)
    rows = stored(fake)
    assert {(rows[u].status, rows[u].reason) for u in uris["junk"]} == {("failed", "undecodable")}
    assert {(rows[u].status, rows[u].reason) for u in uris["bomb"]} == {("failed", "timeout")}
    assert len({json.dumps(rows[u].labels) for u in uris["good"]}) == 1
    assert all(r.labels for r in rows.values() if r.status == "done")


class CountingBackend(FakeBackend):
    """The fake model, counting texts encoded and batches tried; out of memory on demand."""

    def __init__(self, oom_above: int = 0, text_encoder: str = "fake", **options: int) -> None:
        super().__init__(**options)
        self.oom_above = oom_above
        self.text_encoder = text_encoder
        self.text_calls: list[int] = []
        self.tried: list[int] = []

    def encode_texts(self, prompts: Sequence[Sequence[str]]) -> np.ndarray:
        self.text_calls.append(sum(len(group) for group in prompts))
        return super().encode_texts(prompts)

    def encode_images(self, pixels: Sequence[object]) -> np.ndarray:
        self.tried.append(len(pixels))
        if self.oom_above and len(pixels) > self.oom_above:
            raise MemoryError("out of memory: tried to allocate 2.00 GiB")
        return super().encode_images(pixels)


def labels_of(parts: Parts, uris: Sequence[str]) -> dict[str, list[dict]]:
    scoring = parts.labels.get(LABELSET.id)
    assert scoring is not None
    works, _ = parts.tagger.tag([Item(u) for u in uris], scoring, parts.roots.for_run(None),
                                final=False)
    assert all(w.error is None for w in works)
    return {w.item.uri: w.labels for w in works}


def test_out_of_memory_splits_the_batch_and_scores_every_image(start, settings, tmp_path):
    uris = files(tmp_path, list(range(8)))
    expected = labels_of(start(settings, CountingBackend(batch_size=8)), uris)
    tagger = start(settings, CountingBackend(batch_size=8, oom_above=2))
    got = labels_of(tagger, uris)
    assert tagger.tagger.backend.tried == [8, 4, 2, 2, 4, 2, 2]
    assert got == expected and all(got.values())


def test_other_errors_are_not_split(start, settings, tmp_path):
    backend = CountingBackend(batch_size=8)
    backend.fail_with = ValueError("a bug, not memory")
    tagger = start(settings, backend)
    with pytest.raises(ValueError, match="a bug"):
        tag(tagger, files(tmp_path, list(range(8))))
    assert backend.tried == [8] and backend.batches == []


def test_a_chunk_is_handed_to_the_model_in_groups_while_the_rest_decode(start, settings,
                                                                         tmp_path):
    # A GPU's batch (up to 512) is larger than a chunk (64): waiting for a whole batch made each
    # process fetch, decode, encode and write strictly in turn. A quarter of a chunk goes on
    # as soon as it is decoded; the forward thread packs what every chunk handed on.
    fake = start(settings, FakeBackend(batch_size=512))
    batcher = fake.tagger.batcher
    submitted: list[int] = []
    submit = batcher.submit
    batcher.submit = lambda pixels: submitted.append(len(pixels)) or submit(pixels)  # type: ignore
    report = tag(fake, files(tmp_path, list(range(64))))
    assert report.done == 64
    assert submitted == [16, 16, 16, 16]


def test_identical_content_under_other_uris_is_scored_once(start, settings, tmp_path):
    tagger = start(settings, FakeBackend(batch_size=8))
    report = tag(tagger, files(tmp_path, [1, 2, 3, 1, 2, 3], prefix="a"))
    assert report.done == 6
    assert sum(tagger.tagger.backend.batches) == 3
    rows = list(stored(tagger).values())
    labels = {r.content_sha256: r.labels for r in rows}
    assert len(rows) == 6 and len(labels) == 3
    assert all(r.labels == labels[r.content_sha256] for r in rows)

    # Another worker (a fresh Tagger) meets the same bytes under new URIs: the database answers.
    other = start(settings, FakeBackend(batch_size=8))
    got = labels_of(other, files(tmp_path, [3, 1], prefix="b"))
    assert other.tagger.backend.batches == []
    assert list(got.values()) == [labels[hashlib.sha256(image_bytes(seed)).hexdigest()]
                                  for seed in (3, 1)]


def test_text_embeddings_are_computed_once_per_model_label_set_and_encoder(start, settings):
    labelset = LabelSet(labels=tuple(TEST_LABELS), parents=(None,) * len(TEST_LABELS),
                        templates=("{}", "一张{}的照片。"))
    first = start(settings, CountingBackend())
    labelsets.save_labelset(first.engine, labelset)
    texts = first.labels.get(labelset.id).texts
    first.labels.get(labelset.id)
    assert first.tagger.backend.text_calls == [len(TEST_LABELS) * 2]  # every label, both templates
    cached = labelsets.load_text_embeddings(first.engine, first.served.id, labelset.id, "fake")
    assert cached is not None and cached[:2] == (len(TEST_LABELS), texts.shape[1])

    second = start(settings, CountingBackend())  # another worker process, same database
    again = second.labels.get(labelset.id).texts
    assert second.tagger.backend.text_calls == [] and np.array_equal(again, texts)

    other = LabelSet(labels=("猫", "狗"), parents=(None, None))
    labelsets.save_labelset(second.engine, other)
    second.labels.get(other.id)
    assert second.tagger.backend.text_calls == [2]

    onnx_like = start(settings, CountingBackend(text_encoder="another encoder"))
    onnx_like.labels.get(labelset.id)  # embeddings of another encoder are not reused
    assert onnx_like.tagger.backend.text_calls == [len(TEST_LABELS) * 2]


def test_overlap_follows_the_device_and_the_setting(start, settings):
    assert start(settings, FakeBackend()).tagger.prep.turns.enabled  # auto on CPU: take turns
    on = load_settings({"DATABASE_URL": settings.database_url, "TAGGER_DECODE_OVERLAP": "on",
                        "TAGGER_DECODE_PROCESSES": "1"})
    assert not start(on, FakeBackend()).tagger.prep.turns.enabled


def test_top_k_is_capped_by_the_label_count(fake, tmp_path: Path):
    pets = LabelSet(labels=("猫", "狗"), parents=("动物", None))
    labelsets.save_labelset(fake.engine, pets)
    assert fake.tagger.top_k == 3
    uri = files(tmp_path, [5])[0]
    assert tag(fake, [uri], labelset_id=pets.id).done == 1
    labels = stored(fake)[uri].labels
    assert sorted(e["label"] for e in labels) == ["狗", "猫"]
    assert sum(e["score"] for e in labels) == pytest.approx(1.0, abs=1e-5)
    assert labels[0]["score"] >= labels[1]["score"]
    assert {e["label"]: e.get("parent") for e in labels} == {"猫": "动物", "狗": None}
