"""An image's judged label: a reviewer's wins, a rejected one never shows, unsure under its
threshold; the threshold a precision asks for."""

from __future__ import annotations

import pytest

from worker.core.judgement import Verdicts, judge, propose_threshold

LABELS = [{"label": "台灯", "score": 0.6}, {"label": "家具", "score": 0.3},
          {"label": "椅子", "score": 0.1}]


def test_the_model_label_without_verdicts_and_unsure_under_its_threshold():
    shown = judge(LABELS, None, {})
    assert (shown.label, shown.score, shown.by, shown.unsure) == ("台灯", 0.6, "model", False)
    assert judge(LABELS, None, {"台灯": 0.7}).unsure
    assert not judge(LABELS, None, {"台灯": 0.6, "家具": 0.9}).unsure  # at it is sure


def test_a_reviewers_label_wins_and_is_never_unsure():
    shown = judge(LABELS, Verdicts(right="椅子", reviewer="ann"), {"椅子": 0.99})
    assert (shown.label, shown.score, shown.by, shown.unsure) == ("椅子", 0.1, "reviewer", False)
    # A label the model did not rank in its top k still wins, without a score.
    assert judge(LABELS, Verdicts(right="沙发"), {}).label == "沙发"
    assert judge(LABELS, Verdicts(right="沙发"), {}).score is None


def test_a_rejected_label_gives_way_to_the_next():
    shown = judge(LABELS, Verdicts(wrong=frozenset({"台灯"})), {})
    assert (shown.label, shown.by, shown.rejected) == ("家具", "model", ("台灯",))
    gone = judge(LABELS, Verdicts(wrong=frozenset({"台灯", "家具", "椅子"})), {})
    assert gone.label is None and gone.unsure


@pytest.mark.parametrize(("precision", "expected"), [(1.0, 0.8), (0.75, 0.6), (0.5, 0.5)])
def test_the_lowest_score_that_keeps_the_precision(precision, expected):
    reviewed = [(0.9, True), (0.8, True), (0.7, False), (0.6, True), (0.5, False)]
    assert propose_threshold(reviewed, precision) == expected


def test_equal_scores_are_kept_or_dropped_together_and_none_when_out_of_reach():
    # At 0.8 two images, one wrong: 0.8 keeps 2 of 3 right, never 2 of 2.
    assert propose_threshold([(0.9, True), (0.8, True), (0.8, False)], 1.0) == 0.9
    assert propose_threshold([(0.9, False), (0.5, False)], 0.5) is None
    assert propose_threshold([], 0.9) is None
