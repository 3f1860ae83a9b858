"""The model wrapper: preprocessing from the checkpoint, scores equal to transformers' own path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import TEST_LABELS, direct_scores, image_bytes
from worker.decode import Preprocess, decode
from worker.model import Scorer, choose_dtype


@pytest.fixture(scope="module")
def scorer(tiny_model) -> Scorer:
    return Scorer(str(tiny_model), device="cpu", dtype="float32", batch_size=4)


def test_preprocess_comes_from_the_checkpoint(scorer):
    assert scorer.preprocess == Preprocess(height=32, width=32, resample=3)


def test_scores_match_transformers(scorer, tiny_model):
    images = [image_bytes(i) for i in range(5)]
    pixels = np.stack([decode(b, scorer.preprocess, max_pixels=10**8) for b in images])
    texts = scorer.to_device(scorer.encode_texts([[label] for label in TEST_LABELS]))
    got = scorer.score(scorer.encode_images(pixels), texts, top_k=3)
    for scores, truth in zip(got, direct_scores(tiny_model, TEST_LABELS, images), strict=True):
        assert [TEST_LABELS[i] for i in scores.indices] == sorted(truth, key=truth.get,
                                                                  reverse=True)[:3]
        for index, score in zip(scores.indices, scores.scores, strict=True):
            assert score == pytest.approx(truth[TEST_LABELS[index]], abs=1e-5)


def test_template_ensemble_is_the_normalised_mean(scorer):
    both = scorer.encode_texts([["猫的照片。", "一张猫。"]])[0]
    one = scorer.encode_texts([["猫的照片。"]])[0]
    two = scorer.encode_texts([["一张猫。"]])[0]
    mean = (one + two) / np.linalg.norm(one + two)
    assert np.allclose(both, mean, atol=1e-5)
    assert np.linalg.norm(both) == pytest.approx(1.0, abs=1e-5)


def test_bfloat16_agrees_with_float32(tiny_model, scorer):
    bf16 = Scorer(str(tiny_model), device="cpu", dtype="bfloat16", batch_size=4)
    pixels = np.stack([decode(image_bytes(i), scorer.preprocess, max_pixels=10**8)
                       for i in range(4)])
    a, b = scorer.encode_images(pixels), bf16.encode_images(pixels)
    assert bf16.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def test_dtype_choice():
    cpu = torch.device("cpu")
    assert choose_dtype("float32", cpu) == torch.float32
    assert choose_dtype("auto", torch.device("cuda")) == torch.float16
    assert choose_dtype("auto", cpu) in {torch.bfloat16, torch.float32}


def test_top_k_is_capped_by_the_label_count(scorer):
    pixels = np.zeros((1, 32, 32, 3), np.uint8)
    texts = scorer.to_device(scorer.encode_texts([["猫"], ["狗"]]))
    (scores,) = scorer.score(scorer.encode_images(pixels), texts, top_k=5)
    assert len(scores.indices) == 2 and sum(scores.scores) == pytest.approx(1.0, abs=1e-5)


def test_decode_matches_the_processor_resize(scorer):
    data = image_bytes(7, size=(57, 41))
    ours = decode(data, scorer.preprocess, max_pixels=10**8)
    theirs = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), 3))
    assert np.array_equal(ours, theirs)
