"""Embeddings of known structure, as the learning tests and benchmarks.corrections use them:
label clusters in a subspace of the sphere, text vectors off their centres (see that
benchmark's docstring for the numbers), and a reviewer's verdicts on some of the images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from producer.learn.fit import Examples, top

SUBSPACE = 32  # the dimensions labels and images vary in (of the embedding's 512)
NOISE = 1.5  # an image's distance from its label's centre (centres are unit vectors there)
OFFSET = 0.85  # a text vector's own offset from its label's centre
CONFUSION = 0.9  # at most this much of another label's centre in a text vector
GAP = 2.0  # the direction every image shares, and the other one every text shares


@dataclass(frozen=True)
class World:
    centres: np.ndarray  # (labels, SUBSPACE)
    basis: np.ndarray  # (SUBSPACE + 2, dim) orthonormal: the subspace, the two shared directions
    texts: np.ndarray  # (labels, dim)

    def images(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((len(labels), SUBSPACE)).astype(np.float32)
        inside = self.centres[labels] + noise * (NOISE / SUBSPACE**0.5)
        return _normalised(inside @ self.basis[:SUBSPACE] + GAP * self.basis[SUBSPACE])


def _normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def world(rng: np.random.Generator, labels: int, dim: int) -> World:
    """Label centres, and text vectors off them and drawn to a confusable label's centre."""
    basis = np.linalg.qr(rng.standard_normal((dim, SUBSPACE + 2)))[0].T.astype(np.float32)
    centres = _normalised(rng.standard_normal((labels, SUBSPACE)))
    pull = rng.uniform(0, CONFUSION, (labels, 1)).astype(np.float32)
    texts = (centres + OFFSET * _normalised(rng.standard_normal((labels, SUBSPACE)))
             + pull * centres[rng.permutation(labels)])
    return World(centres, basis, _normalised(texts @ basis[:SUBSPACE]
                                             + GAP * basis[SUBSPACE + 1]))


def reviewed(rng: np.random.Generator, w: World, per_label: int) -> Examples:
    """Verdicts on ``per_label`` images of each label, as a reviewer gives them."""
    truth = np.repeat(np.arange(len(w.centres)), per_label)
    x = w.images(rng, truth)
    guess = top(w.texts, x)
    pick = (guess == truth) | (np.arange(len(truth)) % 2 == 0)  # accept, or pick the right one
    label = np.where(pick, truth, guess)
    return Examples(x, label, pick, np.arange(len(truth)))
