"""Search's parts on NumPy arrays: exact search, pairs into groups, the faiss index, queries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from producer import duplicates as writing
from testkit.vectors import clustered
from worker.core.errors import ConfigError
from worker.search import delta, exact, index
from worker.search.groups import group
from worker.search.hits import Group, Hit
from worker.search.text import MAX_QUERY_CHARS, check_query


def brute(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    scores = queries.astype(np.float32) @ vectors.astype(np.float32).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_exact_top_matches_a_full_sort_across_blocks(monkeypatch):
    monkeypatch.setattr(exact, "BLOCK", 100)  # several blocks, merged
    vectors = clustered(1000, 32, seed=1)
    keys = np.arange(1000, dtype=np.int64) * 3 - 7
    queries = vectors[:20].astype(np.float32)
    scores, found = exact.top(queries, vectors, keys, 10)
    assert (found == keys[brute(queries, vectors, 10)]).all()
    assert (np.diff(scores, axis=1) <= 0).all()
    assert (found[:, 0] == keys[:20]).all()  # each vector finds itself first


def test_exact_pairs_are_every_pair_above_the_threshold_once(monkeypatch):
    monkeypatch.setattr(exact, "BLOCK", 64)
    vectors = clustered(300, 16, seed=2, spread=0.3)
    keys = np.arange(300, dtype=np.int64)
    cos = vectors.astype(np.float32) @ vectors.astype(np.float32).T
    want = {(a, b) for a in range(300) for b in range(a + 1, 300) if cos[a, b] >= 0.9}
    got = [(a, b) for a, b, _ in exact.pairs(vectors, keys, 0.9)]
    assert len(got) == len(set(got)) and set(got) == want and want


def test_groups_hold_every_pair_and_no_member_without_one():
    rng = np.random.default_rng(3)
    pairs = [(int(a), int(b), 0.99) for a, b in rng.integers(0, 200, (150, 2)) if a != b]
    pairs += [(b, a, s) for a, b, s in pairs[:20]]  # found from both sides
    groups = group(pairs)
    where = {key: n for n, (members, _) in enumerate(groups) for key in members}
    assert all(where[a] == where[b] for a, b, _ in pairs)
    for members, edges in groups:
        touched = {k for a, b, _ in edges for k in (a, b)}
        assert touched == set(members) and len(members) > 1


def test_a_flat_index_is_exact_and_filters_exactly():
    vectors = clustered(2000, 32, seed=4)
    keys = np.arange(2000, dtype=np.int64) + 10**12
    flat = index.Index.empty(32, 2000)
    flat.add(keys, vectors)
    assert flat.kind == "flat"
    queries = vectors[:50].astype(np.float32)
    _, found = flat.search(queries, 10)
    assert (found == keys[brute(queries, vectors, 10)]).all()
    within = keys[1::7]
    _, found = flat.search(queries, 5, within)
    assert np.isin(found, within).all()
    cos = vectors[:50].astype(np.float32) @ vectors.astype(np.float32).T
    want = {tuple(sorted((int(keys[a]), int(keys[b])))) for a, b in zip(*np.nonzero(cos >= 0.7),
                                                                      strict=True) if a != b}
    got = {(a, b) for a, b, _ in flat.pairs(queries, keys[:50], 0.7)}
    assert got == want and want  # a flat index's pairs are every pair above the threshold


def test_the_graph_agrees_with_exact_search_on_the_top_ten(monkeypatch, tmp_path):
    monkeypatch.setattr(index, "EXACT_BELOW", 1000)
    vectors = clustered(5000, 64, seed=5)
    keys = np.arange(5000, dtype=np.int64) - 2500
    graph = index.Index.empty(64, 5000)
    graph.add(keys, vectors)
    assert graph.kind == "hnsw"
    queries = vectors[::97].astype(np.float32)
    _, found = graph.search(queries, 10)
    unfiltered = found
    truth = keys[brute(queries, vectors, 10)]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95, recall
    # Filtered searches are exact over the keys they keep (the same scores; ties within float
    # rounding may swap the tenth).
    within = keys[::13]
    scores, found = graph.search(queries, 10, within)
    assert np.isin(found, within).all()
    best = -np.sort(-(queries @ vectors[::13].astype(np.float32).T), axis=1)[:, :10]
    assert np.allclose(scores, np.minimum(best, 1), atol=1e-5)
    graph.save(tmp_path, "x")
    loaded = index.Index.load(tmp_path, "x")
    assert loaded is not None and loaded.count == 5000
    assert (loaded.search(queries, 10)[1] == unfiltered).all()


def test_a_delta_answers_beside_the_main_index_until_folded(monkeypatch, tmp_path):
    monkeypatch.setattr(index, "EXACT_BELOW", 1000)
    monkeypatch.setattr(delta, "FOLD_AT", 900)
    vectors = clustered(4000, 32, seed=7)
    keys = np.arange(4000, dtype=np.int64) * 5
    graph = index.Index.empty(32, 3000)
    graph.add(keys[:3000], vectors[:3000])
    graph.save(tmp_path, "x")
    main_file = graph.meta["index"]
    gone = keys[:100]
    graph.change(keys[3000:3500], vectors[3000:3500], gone)
    graph.save(tmp_path, "x", main=False)
    assert graph.meta["index"] == main_file and len(graph.delta) == 500
    mapped = index.Index.load(tmp_path, "x")
    assert mapped is not None and mapped.count == 3400
    live = np.r_[100:3500]
    queries = vectors[live[::37]].astype(np.float32)
    truth = keys[live][brute(queries, vectors[live], 10)]
    _, found = mapped.search(queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95 and not np.isin(found, gone).any(), recall
    assert (mapped.search(vectors[3000:3010], 1)[1][:, 0] == keys[3000:3010]).all()
    mapped.writable()
    mapped.change(keys[3500:], vectors[3500:], np.zeros(0, np.int64))  # 1,000: folded
    assert mapped.meta["folded"] and len(mapped.delta) == 0 and mapped.count == 3900
    mapped.save(tmp_path, "x", main=True)
    again = index.Index.load(tmp_path, "x")
    assert again is not None and again.meta["index"] != main_file and again.count == 3900
    assert (again.search(vectors[3990:], 1)[1][:, 0] == keys[3990:]).all()
    assert not np.isin(again.search(vectors[:100], 5)[1], gone).any()


def test_a_damaged_index_loads_as_none(tmp_path):
    flat = index.Index.empty(8, 10)
    flat.add(np.arange(10, dtype=np.int64), clustered(10, 8, seed=6))
    flat.save(tmp_path, "x")
    meta = json.loads((tmp_path / "x.json").read_text())
    (tmp_path / meta["index"]).write_bytes(b"not an index")
    assert index.Index.load(tmp_path, "x") is None


@pytest.mark.parametrize("query", ["", "   \n", "长" * 10_000])
def test_a_query_that_cannot_be_searched_is_one_line(query):
    with pytest.raises(ConfigError) as raised:
        check_query(query)
    assert "\n" not in str(raised.value)
    assert check_query(" 红色  连衣裙 ") == "红色 连衣裙"
    assert len(check_query("长" * MAX_QUERY_CHARS)) == MAX_QUERY_CHARS


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".html"])
def test_groups_are_written_in_each_format(tmp_path, suffix):
    hits = [Hit("file:///a/<b>.jpg", 0.99, "ab" * 32, "台灯", "r1"),
            Hit("file:///a/c.jpg", 0.99, "cd" * 32, None, "r1")]
    path = tmp_path / f"dupes{suffix}"
    writing.write([Group(hits, [(hits[0].uri, hits[1].uri, 0.99)], False)], path, 0.95)
    text = path.read_text(encoding="utf-8")
    assert "file:///a/c.jpg" in text
    if suffix == ".html":
        assert "&lt;b&gt;" in text and "<b>" not in text  # escaped
    with pytest.raises(ConfigError):
        writing.check_output(tmp_path / "dupes.txt")
