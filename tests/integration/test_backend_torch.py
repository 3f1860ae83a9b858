"""The PyTorch backend on the tiny checkpoint: preprocessing, scores equal to transformers'."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from testkit.images import image_bytes
from testkit.models import TEST_LABELS, direct_scores
from worker.backends.choose import load_backend
from worker.backends.folder import resolve
from worker.backends.torch_clip import TorchBackend, choose_batch_size, choose_precision
from worker.core.errors import ConfigError
from worker.core.pixels import Preprocess
from worker.core.settings import Settings, load_settings
from worker.decoders import Limits
from worker.decoders.pillow import decode_image

LIMITS = Limits(max_pixels=10**8, max_memory=2**30, seconds=30)


def settings_for(**values: str) -> Settings:
    return load_settings({"TAGGER_DEVICE": "cpu", "TAGGER_PRECISION": "float32",
                          "TAGGER_BATCH_SIZE": "4", "TAGGER_BACKEND": "torch", **values})


@pytest.fixture(scope="module")
def backend(tiny_model: Path) -> TorchBackend:
    return TorchBackend(settings_for(), tiny_model)


def pixels(backend: TorchBackend, seeds: range) -> list[np.ndarray]:
    return [decode_image(image_bytes(i), backend.preprocess, LIMITS) for i in seeds]


def test_preprocess_comes_from_the_checkpoint(backend):
    assert backend.preprocess == Preprocess(height=32, width=32, resample=3)
    assert (backend.description, backend.text_encoder, backend.device) == (
        "torch float32 cpu", "torch float32", "cpu")
    assert backend.batch_size == 4


def test_load_backend_picks_the_named_one(tiny_model):
    loaded = load_backend(settings_for(), tiny_model)
    assert isinstance(loaded, TorchBackend) and loaded.name == "torch"


def test_scores_match_transformers(backend, tiny_model):
    images = [image_bytes(i) for i in range(5)]
    embeddings = backend.encode_images(pixels(backend, range(5)))
    texts = backend.encode_texts([[label] for label in TEST_LABELS])
    assert embeddings.dtype == np.float32 and texts.shape[0] == len(TEST_LABELS)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    logits = backend.logit_scale * embeddings @ texts.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for row, truth in zip(probs, direct_scores(tiny_model, TEST_LABELS, images), strict=True):
        top = np.argsort(-row)[:3]
        assert [TEST_LABELS[i] for i in top] == sorted(truth, key=truth.get, reverse=True)[:3]
        for index in top:
            assert row[index] == pytest.approx(truth[TEST_LABELS[index]], abs=1e-5)


def test_template_ensemble_is_the_normalised_mean(backend):
    both = backend.encode_texts([["猫的照片。", "一张猫。"]])[0]
    one = backend.encode_texts([["猫的照片。"]])[0]
    two = backend.encode_texts([["一张猫。"]])[0]
    mean = (one + two) / np.linalg.norm(one + two)
    assert np.allclose(both, mean, atol=1e-5)
    assert np.linalg.norm(both) == pytest.approx(1.0, abs=1e-5)


def test_bfloat16_agrees_with_float32(tiny_model, backend):
    bf16 = TorchBackend(settings_for(), tiny_model, precision="bfloat16")
    batch = pixels(backend, range(4))
    a, b = backend.encode_images(batch), bf16.encode_images(batch)
    assert bf16.dtype == torch.bfloat16 and bf16.description == "torch bfloat16 cpu"
    assert bf16.text_encoder == backend.text_encoder  # texts stay float32: one cache for both
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99


def test_precision_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_precision("float32", cpu) == "float32"
    assert choose_precision("auto", cuda) == "float16"
    assert choose_precision("auto", cpu) in {"bfloat16", "float32"}
    with pytest.raises(ConfigError, match="TAGGER_BACKEND=onnx"):
        choose_precision("int8", cpu)
    assert (choose_batch_size(0, cpu), choose_batch_size(7, cpu)) == (16, 7)


def test_out_of_memory_is_recognised(backend):
    assert backend.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not backend.is_out_of_memory(ValueError("a bug"))
    assert backend.memory() is None  # on the CPU
    backend.release_memory()


def test_decode_matches_the_processor_resize(backend):
    data = image_bytes(7, size=(57, 41))
    ours = decode_image(data, backend.preprocess, LIMITS)
    theirs = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), 3))
    assert np.array_equal(ours, theirs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float16_on_cuda_agrees_with_float32_on_cpu(tiny_model, backend):
    gpu = TorchBackend(settings_for(TAGGER_DEVICE="cuda", TAGGER_PRECISION="auto"), tiny_model)
    assert gpu.precision == "float16" and gpu.device.startswith("cuda")
    batch = pixels(backend, range(4))
    a, b = backend.encode_images(batch), gpu.encode_images(batch)
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99
    allocated, peak = gpu.memory()
    assert peak >= allocated > 0


@pytest.mark.parametrize("shard", [None, "200KB"])
def test_a_checkpoint_saved_by_the_installed_transformers_loads(
        tiny_model: Path, backend: TorchBackend, tmp_path: Path, shard: str | None):
    """save_pretrained here writes tokenizer.json and no vocab.txt (and shards on request)."""
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    saved = tmp_path / "saved"
    ChineseCLIPModel.from_pretrained(tiny_model).save_pretrained(
        saved, **({"max_shard_size": shard} if shard else {}))
    ChineseCLIPProcessor.from_pretrained(tiny_model).save_pretrained(saved)
    assert not (saved / "vocab.txt").exists() and (saved / "tokenizer.json").exists()
    assert (saved / "model.safetensors.index.json").exists() == bool(shard)
    folder = resolve(str(saved))
    again = load_backend(settings_for(), folder)
    texts = [[label] for label in TEST_LABELS]
    assert np.allclose(again.encode_texts(texts), backend.encode_texts(texts), atol=1e-6)
    images = pixels(backend, range(3))
    assert np.allclose(again.encode_images(images), backend.encode_images(images), atol=1e-6)
