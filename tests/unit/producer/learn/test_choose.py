"""Learning label vectors from verdicts, on embeddings of known structure (testkit/clusters):
no verdict contradicted, better on held-out images than zero-shot, measured by folds that keep
an image's verdicts together."""

from __future__ import annotations

import numpy as np

from producer.learn.choose import folds, learn
from producer.learn.fit import Examples, Start, agreeing, logit_scale, top
from testkit.clusters import reviewed, world


def _start(rng: np.random.Generator, w, scale: float = 100.0) -> Start:
    return Start(w.texts, scale, w.images(rng, rng.integers(0, len(w.texts), 2000)).mean(0))


def test_learned_vectors_keep_every_verdict_and_beat_zero_shot_on_held_out_images():
    rng = np.random.default_rng(3)
    w = world(rng, 20, 128)
    examples = reviewed(rng, w, 5)
    held = rng.integers(0, 20, 3000)
    x = w.images(rng, held)
    learned = learn(_start(rng, w), examples)
    assert learned.report["contradicted"] == 0
    assert agreeing(learned.vectors, examples).all()
    zero, after = (top(w.texts, x) == held).mean(), (top(learned.vectors, x) == held).mean()
    assert after > zero + 0.05, (zero, after)
    measured = learned.report["agreement"]
    assert measured["learned"] > measured["zero-shot"], learned.report
    assert learned.report["method"] in {"prototype", "probe"}


def test_a_verdict_the_zero_shot_vectors_contradict_is_kept():
    rng = np.random.default_rng(1)
    w = world(rng, 6, 64)
    x = w.images(rng, np.array([0]))
    wrong_label = int(top(w.texts, x)[0])
    picked = (wrong_label + 1) % 6  # a reviewer says: it is this one
    one = Examples(x, np.array([picked]), np.array([True]), np.array([0]))
    learned = learn(_start(rng, w), one)
    assert int(top(learned.vectors, x)[0]) == picked
    assert learned.report["folds"] == 0 and learned.report["agreement"]["learned"] is None


def test_folds_keep_an_images_verdicts_together_and_cover_each_once():
    labels = np.array([0, 1, 1, 2, 0, 2, 1])
    groups = np.array([0, 0, 1, 2, 3, 3, 4])  # images 0 and 3 have two verdicts each
    examples = Examples(np.zeros((7, 4), np.float32), labels, np.ones(7, bool), groups)
    held = folds(examples, k=3)
    assert sorted(np.concatenate(held).tolist()) == list(range(7))
    for rows in held:
        assert set(groups[rows]).isdisjoint(set(np.delete(groups, rows)))


def test_the_logit_scale_is_found_from_stored_top_scores():
    rng = np.random.default_rng(0)
    w = world(rng, 10, 64)
    x = w.images(rng, rng.integers(0, 10, 50))
    logits = 42.0 * (x @ w.texts.T)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    found = logit_scale(x, w.texts, np.round(probs.max(1), 6))
    assert found is not None and abs(found - 42.0) < 0.5
