"""Kept embeddings' stored form, their keys and ranges; scoring; the relabel message."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import tracemalloc
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from producer.export import export_embeddings
from worker.core.contract import Item, Span, label_scores
from worker.core.embedding import KEY_MAX, KEY_MIN, key_of, pack, spans, unpack
from worker.core.errors import MessageError
from worker.core.labels import LabelSet
from worker.core.scored import LabelsText
from worker.loop import scores as scoring
from worker.loop.scores import top_k, top_labels


def normalised(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_a_kept_embedding_decodes_to_exactly_its_float16_in_under_a_kilobyte():
    vectors = normalised(200, 512)
    blobs = [pack(v) for v in vectors]
    assert np.array_equal(unpack(blobs, 512).vectors, vectors.astype(np.float16))
    assert unpack(blobs, 512).corrupt == {}
    # What lets 8 rows (~960 bytes each with their keys) share an 8 KB page: 1,024 raw.
    assert max(len(b) for b in blobs) < 940
    tiny = normalised(3, 16)
    assert np.array_equal(unpack([pack(v) for v in tiny], 16).vectors, tiny.astype(np.float16))


GOOD = pack(normalised(1, 512)[0])


@pytest.mark.parametrize(("blob", "problem"), [
    (b"", "is cut short"),
    (b"\x00" * 10, "does not inflate (Error -3 while decompressing data: invalid stored block "
                   "lengths)"),
    (pack(normalised(1, 8)[0]), "holds 8 of 512 values"),  # another width
    (GOOD[:-1], "is 1 byte too short"), (GOOD + b"\x00", "is 1 byte too long"),
    (GOOD[:200], "is cut short"), (GOOD + GOOD, f"is {len(GOOD)} bytes too long"),
    (pack(2 * normalised(1, 512)[0]), "not a normalised embedding (length 2)"),
    (pack(np.full(512, np.nan, np.float32)), "not a normalised embedding (length nan)"),
])
def test_a_damaged_row_is_corrupt_alone(blob: bytes, problem: str):
    """Each row is checked on its own: before, one damaged row failed its whole batch, and a
    row one byte long or short was read shifted."""
    neighbours = normalised(2, 512, seed=5)
    unpacked = unpack([pack(neighbours[0]), blob, pack(neighbours[1])], 512)
    assert unpacked.corrupt == {1: problem}
    assert np.array_equal(unpacked.vectors[[0, 2]], neighbours.astype(np.float16))
    assert not unpacked.vectors[1].any()  # scored as nothing, never as garbage


def test_keys_keep_the_order_of_the_hashes_and_ranges_cover_every_key():
    hashes = sorted(hashlib.sha256(str(i).encode()).digest() for i in range(1000))
    keys = [key_of(h) for h in hashes]
    assert keys == sorted(keys) and keys[0] >= KEY_MIN and keys[-1] <= KEY_MAX
    assert key_of(bytes(32)) == KEY_MIN and key_of(b"\xff" * 32) == KEY_MAX
    parts = list(spans(7))
    assert parts[0][0] == KEY_MIN and parts[-1][1] == KEY_MAX
    assert all(hi + 1 == lo for (_, hi), (lo, _) in itertools.pairwise(parts))
    counts = [sum(lo <= k <= hi for k in keys) for lo, hi in parts]
    assert sum(counts) == 1000 and min(counts) > 100  # hashes spread evenly


def test_top_labels_rank_as_a_stable_sort_of_the_softmax():
    labels = LabelSet(labels=tuple("abcdefgh"), parents=("p",) * 4 + (None,) * 4)
    texts = normalised(8, 16, seed=1)
    texts[5] = texts[2]  # a tie: the label listed first ranks higher
    images = normalised(50, 16, seed=2)
    images[0] = texts[2]
    got = top_labels(images, labels, texts, 100.0, 3)
    logits = 100.0 * images @ texts.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for row, scored in zip(probs, got, strict=True):
        order = np.argsort(-row, kind="stable")[:3]
        assert [e["label"] for e in scored] == [labels.labels[i] for i in order]
        assert [e["score"] for e in scored] == pytest.approx(row[order].tolist(), abs=1e-5)
    assert [e["label"] for e in got[0][:2]] == ["c", "f"]
    assert got[0][0]["parent"] == "p" and "parent" not in got[0][1]
    assert len(top_labels(images, labels, texts, 100.0, 20)[0]) == 8


def test_scoring_in_label_blocks_ranks_and_scores_as_one_softmax(monkeypatch):
    texts, images = normalised(300, 16, seed=1), normalised(40, 16, seed=2)
    texts[250] = texts[3]  # a tie across blocks: the label listed first ranks higher
    images[0] = texts[3]
    whole = top_k(images, texts, 100.0, 5)
    monkeypatch.setattr(scoring, "BLOCK_BYTES", 4 * len(images) * 7)  # 43 blocks of 7 labels
    blocks = top_k(images, texts, 100.0, 5)
    assert blocks[0] == whole[0] and blocks[0][0][:2] == [3, 250]
    assert np.allclose(blocks[1], whole[1], atol=1e-6)


def test_scoring_memory_is_flat_in_the_number_of_labels():
    """5,000 images x 20,000 labels held 400 MB of scores at once (60,000 labels: 1.2 GB)."""
    images = normalised(5000, 16).astype(np.float16)
    texts = normalised(20_000, 16, seed=1)
    tracemalloc.start()
    try:
        top_k(images, texts, 100.0, 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak  # a block of scores (32 MiB), the images and the top k


def test_an_item_carries_a_content_hash_only_in_its_exact_form():
    sha = "ab" * 32
    item = Item("s3://b/1.jpg", version="e1", sha256=sha)
    assert item.encode()["sha256"] == sha and Item.decode(item.encode()) == item
    assert "sha256" not in Item("s3://b/1.jpg").encode()
    for bad in ("AB" * 32, "ab" * 31, 7, "../" + "a" * 61):
        with pytest.raises(MessageError, match="sha256"):
            Item.decode({"uri": "s3://b/1.jpg", "sha256": bad})


def span_message(**changes: Any) -> dict[str, Any]:
    return {**Span("m", "ls1", "run1", -5, 9, scope_run="run0").encode(), **changes}


def test_a_relabel_message_round_trips():
    span = Span("m", "ls1", "run1", KEY_MIN, KEY_MAX)
    assert Span.decode(span.encode()) == span
    assert Span.decode(span_message()).scope_run == "run0"
    assert "kept embeddings" in span.describe()


@pytest.mark.parametrize(("changes", "error"), [
    ({"model": ""}, "names no model"),
    ({"labelset_id": "a b"}, "bad labelset_id"),
    ({"run_id": None}, "bad run_id"),
    ({"scope_run": "x;y"}, "bad scope_run"),
    ({"lo": 10, "hi": 9}, "lo <= hi"),
    ({"lo": 1.5}, "64-bit integers"),
    ({"hi": True}, "64-bit integers"),
    ({"hi": 2**63}, "64-bit integers"),
    ({"lo": "0"}, "64-bit integers"),
])
def test_malformed_relabel_messages_are_message_errors(changes: dict[str, Any], error: str):
    with pytest.raises(MessageError, match=error):
        Span.decode(span_message(**changes))


def kept_rows() -> list[tuple[list[Any], np.ndarray, dict[int, str]]]:
    rows = [SimpleNamespace(uri=f"s3://b/{i}.jpg?X-Amz-Signature=secret", item_key=f"k{i}",
                            model="m", content_sha256=f"{i:064x}") for i in range(3)]
    return [(rows[:2], normalised(2, 4).astype(np.float16), {}),
            (rows[2:], normalised(1, 4, seed=3).astype(np.float16), {})]


def test_embeddings_export_as_parquet_fixed_size_lists_of_float32():
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    assert export_embeddings(iter(kept_rows()), out, "parquet") == (3, 0)
    table = pq.read_table(io.BytesIO(out.getvalue()))
    assert table.column_names == ["uri", "key", "model", "sha256", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    first = kept_rows()[0][1][0]
    assert np.array_equal(np.asarray(table.column("embedding")[0].as_py(), np.float32), first)
    assert "secret" not in "".join(table.column("uri").to_pylist())
    empty = io.BytesIO()
    assert export_embeddings(iter([]), empty, "parquet") == (0, 0)
    assert pq.read_table(io.BytesIO(empty.getvalue())).num_rows == 0


def test_embeddings_export_one_parquet_schema_whatever_a_batch_holds():
    """Folder images (no key) in one batch, catalogue rows (keys) in the next: before, the
    second batch's schema did not match the first's (key null vs string), a traceback and a
    corrupt file. A row whose stored embedding is corrupt is left out, and counted."""
    import pyarrow.parquet as pq

    folder = [SimpleNamespace(uri=f"file:///photos/{i}.jpg", item_key=None, model="m",
                              content_sha256=f"{i:064x}") for i in range(2)]
    catalogue = [SimpleNamespace(uri=f"s3://b/{i}.jpg", item_key=f"sku-{i}", model="m",
                                 content_sha256=f"{i + 9:064x}") for i in range(2)]
    batches = [(folder, normalised(2, 4).astype(np.float16), {}),
               (catalogue, normalised(2, 4, seed=3).astype(np.float16), {1: "is cut short"})]
    out = io.BytesIO()
    assert export_embeddings(iter(batches), out, "parquet") == (3, 1)
    table = pq.read_table(io.BytesIO(out.getvalue()))
    assert table.column("key").to_pylist() == [None, None, "sku-0"]


def test_embeddings_export_as_json_lines():
    out = io.BytesIO()
    assert export_embeddings(iter(kept_rows()), out, "jsonl") == (3, 0)
    records = [json.loads(line) for line in out.getvalue().decode().splitlines()]
    assert [r["key"] for r in records] == ["k0", "k1", "k2"] and len(records[0]["embedding"]) == 4
    assert records[2]["embedding"] == kept_rows()[1][1][0].astype(np.float32).tolist()


def test_relabel_renders_the_labels_json_that_label_scores_would_store():
    labelset = LabelSet(labels=("台\"灯", "猫", "c\\d"), parents=("家居", None, "x\ty"))
    rendered = LabelsText(labelset)
    for indices, scores in (([0, 1, 2], [0.61234567, 0.3, 1e-9]), ([2, 0], [0.5, 0.25])):
        stored = label_scores(labelset.labels, labelset.parents, indices, scores)
        assert rendered.render(indices, scores) == (
            json.dumps(stored, ensure_ascii=False), stored[0]["label"], stored[0]["score"])
