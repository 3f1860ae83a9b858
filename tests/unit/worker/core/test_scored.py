"""A relabel batch: the rows the database gets are the rows `Result.row()` builds."""

from __future__ import annotations

from typing import Any

from worker.core.contract import KEPT_RUNTIME, Item, Result
from worker.core.errors import ItemError, Reason
from worker.core.labels import LabelSet
from worker.core.scored import IMAGE, LabelsText, Range, Scored

LABELS = LabelSet(labels=("台灯", "猫", "桌\t子"), parents=("家居", None, "家具"))
RANGE = Range("chinese-clip", 7, "digest", "0123456789abcdef", "run-1")
ITEMS = [Item("s3://b/a.jpg", key="a", version="v1"), Item("/srv/猫\n.png", version="9"),
         Item("https://x/c.jpg")]
SHAS = ["a" * 64, "b" * 64, "c" * 64]
TOP = ([[0, 1], [2, 0], [1, 2]], [[0.7, 0.2], [0.51234567, 0.4], [0.9, 0.05]])


def image(item: Item, sha: str) -> tuple[Any, ...]:
    """The columns the `images` table holds for an image: its fetch's row."""
    row = Result(item=item, model="m", labelset_id="x", content_sha256=sha).row()
    return tuple(row[name] for name in IMAGE)


def batch(failed: dict[int, ItemError] | None = None) -> Scored:
    images = [image(item, sha) for item, sha in zip(ITEMS, SHAS, strict=True)]
    return Scored(RANGE, LabelsText(LABELS), images, TOP, failed or {})


def test_the_rows_of_a_batch_are_those_its_results_make():
    scored = batch()
    results = list(scored)
    assert len(scored) == len(results) == 3
    assert [r.runtime for r in results] == [KEPT_RUNTIME] * 3
    assert results[1].labels == [{"label": "桌\t子", "score": 0.512346, "parent": "家具"},
                                 {"label": "台灯", "score": 0.4, "parent": "家居"}]
    expected = [{**Result(item=item, model=RANGE.model, labelset_id=RANGE.labelset_id,
                          run_id=RANGE.run_id, labels=r.labels, content_sha256=sha,
                          runtime=KEPT_RUNTIME).row(), "model_id": 7}
                for item, sha, r in zip(ITEMS, SHAS, results, strict=True)]
    assert scored.done_rows() == expected
    assert [r.identity for r in results] == ["digest"] * 3


def test_a_damaged_embedding_fails_its_image_alone():
    error = ItemError(Reason.CORRUPT_EMBEDDING, "kept embedding is damaged")
    scored = batch({1: error})
    assert [line[0] for line in scored.lines()] == [ITEMS[0].uri, ITEMS[2].uri]
    (failed,) = scored.failed_rows()
    assert (failed["uri"], failed["status"], failed["reason"], failed["labels"]) == (
        ITEMS[1].uri, "failed", "corrupt-embedding", [])
    assert (failed["runtime"], failed["top_label"], failed["model_id"]) == (None, None, 7)
    assert [r.status for r in scored] == ["done", "failed", "done"]
