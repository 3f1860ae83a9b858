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
    assert built.kind == "ivf" and built.count == 3000 and "building" in notes[-1]
    queries = vectors[::50].astype(np.float32)
    _, found = built.search(queries, 10)
    _, truth = exact.top(queries, vectors, keys, 10)
    assert all(set(f) == set(t) for f, t in zip(found, truth, strict=True))
    assert (found[:, 0] == keys[::50]).all()  # an image's own embedding finds it first

    more = clustered(400, DIM, seed=2)
    new_keys = keep(database, more, 10_000)
    updated = keeper.current(store, tmp_path, "i", notes.append)
    assert notes[-1] == "adding 400 new kept embeddings to the search index"
    assert updated.meta["sized_for"] == 3000  # added to, not rebuilt
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
    assert new.count == 250 and new.meta["index"] != old.meta["index"]
    assert not (tmp_path / old.meta["index"]).exists()  # removed, yet still mapped:
    assert old.search(vectors[7:8], 1)[1][0, 0] == keys[7]


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
