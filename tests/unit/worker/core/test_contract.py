"""The chunk message and the result row: what producer and workers agree on."""

from __future__ import annotations

from typing import Any

import pytest

from worker.core.contract import MAX_CHUNK_ITEMS, Chunk, Item, Result, label_scores, uri_hash
from worker.core.errors import MessageError, Reason


def message(**changes: Any) -> dict[str, Any]:
    chunk = Chunk(items=(Item("s3://b/1.jpg", key="1", version="e1"), Item("/data/2.png")),
                  model="OFA-Sys/chinese-clip-vit-base-patch16", labelset_id="0123abcd",
                  run_id="run-1", enqueued_at=1_700_000_000.5)
    return {**chunk.encode(), **changes}


def test_chunk_round_trip():
    chunk = Chunk(items=(Item("s3://b/商品 1.jpg", key="sku-1", version="etag"),
                         Item("https://x.example/a.jpg?w=200")),
                  model="m", labelset_id="abc123", run_id="r1", enqueued_at=12.5)
    encoded = chunk.encode()
    assert encoded["items"] == [{"uri": "s3://b/商品 1.jpg", "key": "sku-1", "version": "etag"},
                                {"uri": "https://x.example/a.jpg?w=200"}]
    assert Chunk.decode(encoded) == chunk
    assert "2 images" in chunk.describe() and "商品" not in chunk.describe()


def test_a_message_without_run_or_time_is_accepted():
    data = message()
    del data["run_id"], data["enqueued_at"]
    chunk = Chunk.decode(data)
    assert chunk.run_id is None and chunk.enqueued_at > 0


@pytest.mark.parametrize(("changes", "error"), [
    ({"model": None}, "names no model"),
    ({"model": ""}, "names no model"),
    ({"model": 7}, "'model' must be a string"),
    ({"labelset_id": None}, "bad labelset_id"),
    ({"labelset_id": "../../etc"}, "bad labelset_id"),
    ({"labelset_id": "x" * 65}, "bad labelset_id"),
    ({"run_id": "run 1; drop"}, "bad run_id"),
    ({"items": "s3://b/1.jpg"}, "'items' must be a list"),
    ({"items": {"uri": "s3://b/1.jpg"}}, "'items' must be a list"),
    ({"items": []}, "'items' must be a list"),
    ({"items": [{"uri": "s3://b/1.jpg"}] * (MAX_CHUNK_ITEMS + 1)}, "'items' must be a list"),
    ({"items": [{"key": "1"}]}, "must be an object with a 'uri'"),
    ({"items": [{"uri": 5}]}, "must be an object with a 'uri'"),
    ({"items": ["s3://b/1.jpg"]}, "must be an object with a 'uri'"),
    ({"items": [{"uri": "a", "key": ["x"]}]}, "'key' must be a string"),
])
def test_malformed_messages_are_message_errors(changes: dict[str, Any], error: str):
    with pytest.raises(MessageError, match=error):
        Chunk.decode(message(**changes))


def test_a_missing_model_key_is_a_message_error():
    data = message()
    del data["model"]
    with pytest.raises(MessageError, match="names no model"):
        Chunk.decode(data)


def test_the_largest_chunk_is_accepted():
    chunk = Chunk.decode(message(items=[{"uri": f"/d/{i}.png"} for i in range(MAX_CHUNK_ITEMS)]))
    assert len(chunk.items) == MAX_CHUNK_ITEMS


def test_result_rows():
    item = Item("s3://b/1.jpg", key="k", version="v")
    labels = label_scores(["台灯", "椅子", "猫"], ["家居", "家居", None], [2, 0],
                          [0.61234567, 0.3])
    assert labels == [{"label": "猫", "score": 0.612346},
                      {"label": "台灯", "score": 0.3, "parent": "家居"}]
    done = Result(item, "m", "ls", run_id="r", labels=labels, content_sha256="ab" * 32,
                  runtime="torch float32 cpu").row()
    assert (done["status"], done["top_label"], done["top_score"], done["reason"]) == (
        "done", "猫", 0.612346, None)
    assert (done["uri_hash"], done["item_key"], done["source_version"]) == (
        uri_hash("s3://b/1.jpg"), "k", "v")
    failed = Result(item, "m", "ls", reason=Reason.NOT_FOUND, error="gone").row()
    assert (failed["status"], failed["reason"], failed["top_label"], failed["labels"]) == (
        "failed", "not-found", None, [])


def test_uri_hash_is_fixed_length_and_distinct():
    long = "https://x.example/" + "a" * 20_000
    assert len(uri_hash(long)) == 64 and uri_hash(long) != uri_hash(long + "b")
    assert uri_hash("/商品/台灯.jpg") != uri_hash("/商品/台灯.JPG")
    assert len(uri_hash("/bad\udcff.jpg")) == 64  # undecodable file names still hash
