"""A decode process's answer taken, and identical bytes ending alike."""

from __future__ import annotations

from worker.core.contract import Item
from worker.core.errors import ItemError, Reason, TransientError
from worker.loop.work import Batch, Work, received, same_outcome_for_same_content
from worker.prep import Prepared

SHA = "a" * 64


def test_a_transient_failure_is_tried_again_until_the_last_try():
    slow = TransientError("timed out")
    again, last = Work(Item("a")), Work(Item("b"))
    assert not received(again, Prepared(0, None, slow), final=False)
    assert (again.transient, again.error) == (slow, None)
    assert not received(last, Prepared(1, None, slow), final=True)
    assert last.transient is None and last.error is not None
    assert last.error.reason == Reason.TRANSIENT and "timed out" in str(last.error)


def test_an_answer_is_ready_failed_or_pixels():
    ready, broken = Work(Item("a")), Work(Item("b"))
    assert received(ready, Prepared(0, SHA, "pixels"), final=False)
    assert (ready.sha256, ready.prepared) == (SHA, "pixels")
    error = ItemError(Reason.UNDECODABLE, "not an image")
    assert not received(broken, Prepared(1, SHA, error), final=False)
    assert broken.error is error


def test_copies_of_one_content_end_with_the_labels_any_copy_got():
    labels = [{"label": "猫", "score": 0.9}]
    works = [Work(Item("a"), SHA, error=ItemError(Reason.TRANSIENT, "slow")),
             Work(Item("b"), SHA, labels=labels),
             Work(Item("c"), "b" * 64, error=ItemError(Reason.UNDECODABLE, "x")),
             Work(Item("d"), "b" * 64), Work(Item("e"), SHA, transient=TransientError("later"))]
    same_outcome_for_same_content(works)
    assert [(w.labels, w.error and w.error.reason) for w in works[:4]] == [
        (labels, None), (labels, None), (None, Reason.UNDECODABLE), (None, Reason.UNDECODABLE)]
    assert works[4].labels is None  # it goes again: its own delivery decides


def test_a_batch_holds_each_content_once_with_all_its_works():
    batch, works = Batch(), [Work(Item(str(n))) for n in range(3)]
    for sha, work in zip([SHA, "b" * 64, SHA], works, strict=True):
        batch.add(sha, work)
    assert batch.shas == [SHA, "b" * 64] and batch.works[SHA] == [works[0], works[2]]
