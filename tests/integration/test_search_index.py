"""The search index kept current with a real embeddings table (SQLite and PostgreSQL): built from
it, agreeing with exact search, updated with only what is new, reloaded while searches go on."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from testkit.runs import weights_of
from testkit.vectors import clustered
from worker.core.embedding import key_of
from worker.core.settings import load_settings
from worker.db import embeddings as kept
from worker.db import models
from worker.db.schema import engine_for
from worker.search import exact, index, keeper, store
from worker.search.store import Store

MODEL, DIM = "test-model", 32
ADD = """
import sys
from worker.core.settings import load_settings
from worker.db.schema import engine_for
from worker.search import keeper
from worker.search.store import Store
from pathlib import Path
url, folder = sys.argv[1], Path(sys.argv[2])
store = Store(engine_for(url), load_settings({"DATABASE_URL": url, "TAGGER_MODEL": "test-model"}))
print(keeper.current(store, folder, "i", print).count)
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def store_of(url: str) -> Store:
    """The store of MODEL's kept embeddings (weights a worker registered under that name)."""
    return Store(engine_for(url), load_settings({"DATABASE_URL": url, "TAGGER_MODEL": MODEL}))


def keep(url: str, vectors: np.ndarray, first: int) -> np.ndarray:
    """Kept embeddings for contents ``first``..; their keys."""
    engine = engine_for(url)
    model = models.identify(engine, weights_of(MODEL), MODEL, dim=DIM)
    hashes = [hashlib.sha256(str(first + i).encode()).hexdigest() for i in range(len(vectors))]
    with engine.begin() as conn:
        kept.keep(conn, model, dict(zip(hashes, vectors, strict=True)))
    return np.array([key_of(bytes.fromhex(h)) for h in hashes], np.int64)


def test_the_index_follows_the_table_and_agrees_with_exact_search(database, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(index, "EXACT_BELOW", 1000)  # an IVF at test size
    notes: list[str] = []
    store = store_of(database)
    with pytest.raises(keeper.NothingKept):
        keeper.current(store, tmp_path, "i", notes.append)
    vectors = clustered(3000, DIM, seed=1)
    keys = keep(database, vectors, 0)
    built = keeper.current(store, tmp_path, "i", notes.append)
    assert built.kind == "hnsw" and built.count == 3000 and "building" in notes[-1]
    queries = vectors[::50].astype(np.float32)
    _, found = built.search(queries, 10)
    _, truth = exact.top(queries, vectors, keys, 10)
    assert all(set(f) == set(t) for f, t in zip(found, truth, strict=True))
    assert (found[:, 0] == keys[::50]).all()  # an image's own embedding finds it first

    more = clustered(400, DIM, seed=2)
    new_keys = keep(database, more, 10_000)
    updated = keeper.current(store, tmp_path, "i", notes.append)
    assert notes[-1] == "adding 400 new kept embeddings to the search index"
    # added to its delta: the main index's file is not written again
    assert updated.meta["index"] == built.meta["index"] and len(updated.delta) == 400
    assert updated.count == 3400 and (updated.search(more[:5], 1)[1][:, 0] == new_keys[:5]).all()
    assert keeper.current(store, tmp_path, "i", notes.append).count == 3400
    assert len(notes) == 2  # current: nothing to say


def test_a_snapshot_in_use_survives_a_new_generation(database, tmp_path):
    store = store_of(database)
    vectors = clustered(200, DIM, seed=3)
    keys = keep(database, vectors, 0)
    old = keeper.current(store, tmp_path, "i", print)
    keep(database, clustered(50, DIM, seed=4), 1000)
    new = keeper.current(store, tmp_path, "i", print)
    assert new.count == 250 and new.meta["delta"] != old.meta["delta"]
    assert not (tmp_path / old.meta["delta"]).exists()  # removed, yet still in use:
    assert old.search(vectors[7:8], 1)[1][0, 0] == keys[7] and old.count == 200


def test_a_missing_or_damaged_index_is_rebuilt_with_a_note(database, tmp_path):
    store = store_of(database)
    keep(database, clustered(100, DIM, seed=5), 0)
    first = keeper.current(store, tmp_path, "i", print)
    (tmp_path / first.meta["index"]).write_bytes(b"damaged")
    notes: list[str] = []
    again = keeper.current(store, tmp_path, "i", notes.append)
    assert again.count == 100 and notes == [
        "building the search index over 100 kept embeddings (once: later runs only add to it)"]


def test_sqlite_finds_hits_by_uri_never_by_status(sqlite_url):
    # 'done' is most of the table: searched by the status index, SQLite (no statistics) read
    # it all for each hit (420 ms a similar-image query at 100,000 images, 7 ms without).
    engine = engine_for(sqlite_url)
    for query, index_used in ((store.latest("s3://b/x.jpg"), "(uri_hash=?)"),
                              (store.of_uris(1, ["ab" * 32]), "(uri_hash=?")):
        compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as conn:
            plan = " ".join(str(row) for row in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {compiled}"))
        assert index_used in plan and "ix_results_status" not in plan, plan


def test_a_finder_loads_the_generation_another_process_saved(database, tmp_path, monkeypatch):
    from worker.core.settings import load_settings
    from worker.search import finder as finding

    keep(database, clustered(100, DIM, seed=6), 0)
    settings = load_settings({"DATABASE_URL": database, "TAGGER_MODEL": MODEL,
                              "TAGGER_HOME": str(tmp_path), "TAGGER_INDEX_DIR": str(tmp_path)})
    notes: list[str] = []
    first = finding.Finder(settings, notes.append)
    before = first.index()
    keep(database, clustered(30, DIM, seed=7), 1000)
    other = finding.Finder(settings, print).index()  # another process adds the new ones
    assert other.count == 130
    assert first.index() is before  # until CHECK_SECONDS have passed, the snapshot it has
    monkeypatch.setattr(finding, "CHECK_SECONDS", 0)
    after = first.index()
    assert after.count == 130 and after.meta["index"] == other.meta["index"]
    assert len(notes) == 1 and "building" in notes[0]  # loaded, not added to again
    assert before.search(clustered(100, DIM, seed=6)[:1], 1)[1][0, 0] != -1  # still usable


def test_adding_on_sqlite_reads_only_the_rows_written_since(sqlite_url, tmp_path, monkeypatch):
    store = store_of(sqlite_url)
    keep(sqlite_url, clustered(300, DIM, seed=8), 0)
    keeper.current(store, tmp_path, "i", print)

    def every_key() -> np.ndarray:
        raise AssertionError("every key read to add 20")

    monkeypatch.setattr(store, "keys", every_key)
    more = clustered(20, DIM, seed=9)
    new_keys = keep(sqlite_url, more, 5000)
    added = keeper.current(store, tmp_path, "i", print)
    assert added.count == 320 and (added.search(more, 1)[1][:, 0] == new_keys).all()


def test_a_removed_embedding_stops_answering(database, tmp_path):
    store = store_of(database)
    vectors = clustered(200, DIM, seed=10)
    keys = keep(database, vectors, 0)
    keeper.current(store, tmp_path, "i", print)
    model = models.identify(engine_for(database), weights_of(MODEL), MODEL, dim=DIM)
    kept.forget(engine_for(database), model, [hashlib.sha256(b"7").hexdigest()])
    notes: list[str] = []
    after = keeper.current(store, tmp_path, "i", notes.append)
    assert notes == ["adding 0 new kept embeddings to the search index, removing 1"]
    assert after.count == 199 and keys[7] not in after.search(vectors[7:8], 5)[1]


def test_searches_go_on_while_another_process_adds_and_folds(database, tmp_path, monkeypatch):
    """A real process adds (into the delta, then folded into a new main file) while this one
    searches its snapshot; it then loads the delta alone, and later the folded index."""
    import subprocess
    import sys

    from worker.search import delta
    from worker.search import finder as finding

    monkeypatch.setattr(delta, "FOLD_AT", 150)
    keep(database, clustered(400, DIM, seed=11), 0)
    settings = load_settings({"DATABASE_URL": database, "TAGGER_MODEL": MODEL,
                              "TAGGER_HOME": str(tmp_path), "TAGGER_INDEX_DIR": str(tmp_path)})
    searcher = finding.Finder(settings, print)
    before = searcher.index()
    monkeypatch.setattr(finding, "CHECK_SECONDS", 0)
    more = clustered(200, DIM, seed=12)
    for step, (first, expected) in enumerate(((0, 100), (100, 200))):
        new_keys = keep(database, more[first:first + 100], 5000 + first)
        script = ADD.replace("import sys", "import sys\nfrom worker.search import delta\n"
                             "delta.FOLD_AT = 150")
        done = subprocess.run([sys.executable, "-c", script, database, str(tmp_path)],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0 and done.stdout.split()[-1] == str(400 + expected), done
        assert before.search(more[:1], 1)[1][0, 0] != -1  # the old snapshot still answers
        now = searcher.index()
        assert now.count == 400 + expected
        assert (now.search(more[first:first + 100], 1)[1][:, 0] == new_keys).all()
        if step == 0:  # the delta alone was read: the same main index object
            assert now.main is before.main and len(now.delta) == 100
        else:  # 200 > FOLD_AT: folded into a new main file by the other process
            assert now.meta["index"] != before.meta["index"] and len(now.delta) == 0


def test_the_workbench_keeps_its_index_current_beside_its_searches(database, tmp_path,
                                                                    monkeypatch):
    """The server's Finder is brought up to the table by a thread of its own: searches find a
    snapshot checked moments ago and never count the table themselves."""
    import threading
    import time

    from producer.workbench.finding import Finding
    from worker.search import finder as finding

    monkeypatch.setattr(finding, "CHECK_SECONDS", 0.2)
    keep(database, clustered(100, DIM, seed=13), 0)
    settings = load_settings({"DATABASE_URL": database, "TAGGER_MODEL": MODEL,
                              "TAGGER_HOME": str(tmp_path), "TAGGER_INDEX_DIR": str(tmp_path)})
    server = Finding(settings)
    try:
        searcher, counted_in = server.finder(), []
        count = searcher.store.count
        monkeypatch.setattr(searcher.store, "count", lambda: (
            counted_in.append(threading.current_thread().name), count())[1])
        more = clustered(30, DIM, seed=14)
        new_keys = keep(database, more, 1000)
        deadline = time.monotonic() + 60
        while searcher.snapshot.count != 130 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (searcher.snapshot.search(more, 1)[1][:, 0] == new_keys).all()
        assert counted_in and set(counted_in) == {"finder-current"}
    finally:
        server.close()
