"""The pipeline's speed features work: OOM split, content dedupe, text-embedding cache, decode."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from PIL import Image

from tests.helpers import ROOT, TEST_LABELS, image_bytes
from worker import pipeline, store
from worker.cores import Turns
from worker.decode import Preprocess, decode, to_rgb
from worker.labels import LabelSet
from worker.model import Scorer
from worker.pipeline import Tagger
from worker.settings import load_settings


class CountingScorer(Scorer):
    """The real scorer over the tiny model, counting its calls; can run out of memory on demand."""

    def __init__(self, *args: object, oom_above: int = 0, fail_with: Exception | None = None,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.text_calls: list[int] = []
        self.image_batches: list[int] = []
        self.oom_above = oom_above
        self.fail_with = fail_with

    def encode_texts(self, prompts, batch=256):
        self.text_calls.append(sum(len(group) for group in prompts))
        return super().encode_texts(prompts, batch)

    def encode_images(self, pixels):
        self.image_batches.append(len(pixels))
        if self.fail_with is not None:
            raise self.fail_with
        if self.oom_above and len(pixels) > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().encode_images(pixels)


@pytest.fixture
def settings(sqlite_url, tiny_model, tmp_path):
    return load_settings({"DATABASE_URL": sqlite_url, "TAGGER_MODEL": str(tiny_model),
                          "TAGGER_HOME": str(tmp_path / "home"), "TAGGER_DTYPE": "float32",
                          "TAGGER_BATCH_SIZE": "8", "TAGGER_DECODE_THREADS": "2"})


@pytest.fixture
def labelset(settings) -> LabelSet:
    labels = LabelSet(labels=tuple(TEST_LABELS), parents=(None,) * len(TEST_LABELS),
                      templates=("{}", "一张{}的照片。"))
    store.save_labelset(store.engine_for(settings.database_url), labels)
    return labels


def make_tagger(settings, **kwargs) -> Tagger:
    scorer = CountingScorer(settings.model, "cpu", "float32", settings.batch_size, **kwargs)
    return Tagger(settings, scorer)


def files(tmp_path: Path, seeds: list[int], prefix: str = "img") -> list[dict[str, str]]:
    items = []
    for i, seed in enumerate(seeds):
        path = tmp_path / f"{prefix}-{i}.png"
        path.write_bytes(image_bytes(seed))
        items.append({"uri": str(path)})
    return items


def by_uri(prepared: list[pipeline.Prepared]) -> dict[str, list[dict]]:
    return {p.item["uri"]: p.labels for p in prepared}


def test_out_of_memory_splits_the_batch_and_scores_every_image(settings, labelset, tmp_path):
    items = files(tmp_path, list(range(8)))
    expected, _ = make_tagger(settings).tag(items, labelset.id)

    tagger = make_tagger(settings, oom_above=2)
    prepared, _ = tagger.tag(items, labelset.id)

    assert tagger.scorer.image_batches == [8, 4, 2, 2, 4, 2, 2]
    assert all(p.error is None for p in prepared)
    for (uri, labels), want in zip(by_uri(prepared).items(), expected, strict=True):
        assert [x["label"] for x in labels] == [x["label"] for x in want.labels], uri
        assert [x["score"] for x in labels] == pytest.approx([x["score"] for x in want.labels],
                                                             abs=1e-5)


def test_other_errors_are_not_split(settings, labelset, tmp_path):
    tagger = make_tagger(settings, fail_with=ValueError("a bug, not memory"))
    with pytest.raises(ValueError, match="a bug"):
        tagger.tag(files(tmp_path, list(range(8))), labelset.id)
    assert tagger.scorer.image_batches == [8]


def test_identical_content_under_other_uris_is_scored_once(settings, labelset, tmp_path):
    items = files(tmp_path, [1, 2, 3, 1, 2, 3], prefix="a")
    tagger = make_tagger(settings)
    report = pipeline.run_chunk(tagger, task_id="t1", items=items, labelset_id=labelset.id,
                                run_id=None, retries=0, final=False)
    assert report.done == 6
    assert sum(tagger.scorer.image_batches) == 3
    with store.engine_for(settings.database_url).connect() as conn:
        rows = conn.execute(sa.select(store.results)).all()
    labels = {r.content_sha256: r.labels for r in rows}
    assert len(labels) == 3
    assert all(r.labels == labels[r.content_sha256] for r in rows)

    # Another worker (a fresh Tagger) meets the same bytes under new URIs: the database answers.
    other = make_tagger(settings)
    prepared, _ = other.tag(files(tmp_path, [3, 1], prefix="b"), labelset.id)
    assert other.scorer.image_batches == []
    assert [p.labels for p in prepared] == [labels[p.sha256] for p in prepared]


def test_text_embeddings_are_computed_once_per_model_and_label_set(settings, labelset):
    first = make_tagger(settings)
    _, texts = first.labelset(labelset.id)
    first.labelset(labelset.id)
    assert first.scorer.text_calls == [len(TEST_LABELS) * 2]  # every label under both templates
    engine = store.engine_for(settings.database_url)
    cached = store.load_text_embeddings(engine, settings.model, labelset.id)
    assert cached is not None and cached[:2] == (len(TEST_LABELS), texts.shape[1])

    second = make_tagger(settings)  # another worker process on the same database
    _, again = second.labelset(labelset.id)
    assert second.scorer.text_calls == []
    assert torch.equal(again, texts)

    other = LabelSet(labels=("猫", "狗"), parents=(None, None))
    store.save_labelset(engine, other)
    second.labelset(other.id)
    assert second.scorer.text_calls == [2]


def test_large_transparent_image_is_resized_before_it_is_composed():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (900, 1400, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 1400, dtype=np.uint8)[None, :]  # a transparency ramp
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    spec = Preprocess(height=56, width=64)
    got = decode(out.getvalue(), spec, max_pixels=10**8).astype(int)
    reference = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")).resize(
        (64, 56), resample=Image.Resampling.BICUBIC)).astype(int)
    assert got.shape == (56, 64, 3)
    assert np.abs(got - reference).mean() < 1.0
    assert got[:, :4].mean() > 240  # the transparent edge is white, not black


def test_benchmark_smoke(tmp_path):
    """`python -m benchmarks.run --tiny` measures every stage and the whole distributed flow."""
    for folder, fmt in (("original", "PNG"), ("catalog", "JPEG")):
        (tmp_path / "corpus" / folder).mkdir(parents=True)
        for i in range(3):
            suffix = ".png" if fmt == "PNG" else ".jpg"
            (tmp_path / "corpus" / folder / f"img{i}{suffix}").write_bytes(
                image_bytes(i, size=(300, 200), fmt=fmt))
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--tiny", "--labels", "6", "--corpus", "both",
         "--images", "4", "--seed-images-6", "1", "--tower-seconds", "0.2",
         "--corpus-dir", str(tmp_path / "corpus"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(4)/bound" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["labels"], r["corpus"]) for r in rows] == [("6", "originals"), ("6", "1200")]
    for row in rows:
        assert row["pipeline_detail"]["images"] == 4 and row["pipeline_detail"]["failed"] == 0
        assert min(row["seed_loop"], row["tower"], row["decode"], row["pipeline"]) > 0
        assert row["memory"]["after_warm_up_mib"] > 0


def test_on_cpu_decoders_wait_while_the_model_runs():
    turns = Turns(enabled=True)
    entered = threading.Event()

    def decoder() -> None:
        with turns.decoding():
            entered.set()

    with turns.model():
        thread = threading.Thread(target=decoder)
        thread.start()
        assert not entered.wait(0.3)  # no decode on the model's cores during a forward pass
    assert entered.wait(5)
    thread.join()

    turns = Turns(enabled=False)  # on a GPU the stages overlap
    entered.clear()
    with turns.model():
        thread = threading.Thread(target=decoder)
        thread.start()
        assert entered.wait(5)
    thread.join()


def test_overlap_follows_the_device_and_the_setting(settings):
    scorer = CountingScorer(settings.model, "cpu", "float32", 4)
    assert Tagger(settings, scorer).turns.enabled  # auto on CPU: take turns
    on = dataclasses.replace(settings, decode_overlap="on")
    assert not Tagger(on, scorer).turns.enabled
