"""Corrections on PostgreSQL: imported from CSV (a line per bad row, the rest stored), exported,
carried by `producer export` (a reviewer's label wins, and a later run does not overwrite it),
thresholds proposed from them, and a label set learned from them and scored by a real worker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from testkit.commands import invoke, producer
from testkit.models import TEST_LABELS
from testkit.runs import content_of, seed_run, weights_of
from worker.core.labels import LabelSet
from worker.db import corrections, learned, models, thresholds
from worker.db.labelsets import save_text_embeddings
from worker.db.schema import engine_for

LABELS = LabelSet(labels=tuple(TEST_LABELS), parents=(None,) * len(TEST_LABELS))


@pytest.fixture
def env(tmp_path: Path, pg_url: str, labels_file: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("TAGGER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TAGGER_LABELS", str(labels_file))
    return pg_url


def top(label: str, score: float) -> list[dict[str, object]]:
    other = next(x for x in TEST_LABELS if x != label)
    return [{"label": label, "score": score, "parent": None},
            {"label": other, "score": round(1 - score, 4), "parent": None}]


def exported(*args: str) -> dict[str, dict]:
    return {r["uri"]: r for r in map(json.loads, producer("export", *args).splitlines())}


def test_import_reports_each_bad_row_and_stores_the_rest(env, tmp_path):
    uris = [f"s3://shop/{i}.jpg" for i in range(3)]
    seed_run(env, uris, LABELS, vectors={u: np.ones(4, np.float32) for u in uris})
    sheet = tmp_path / "catalogue.csv"
    sheet.write_text("uri,label,verdict,note\n"
                     f"{uris[0]},台灯,right,ok\n"
                     f"{uris[1]},家具,maybe,bad verdict\n"
                     f"{uris[1]},沙发床,right,no such label\n"
                     "s3://shop/never-tagged.jpg,台灯,wrong,unknown image\n"
                     f"{uris[1]},家具\n"
                     f"{uris[2]},猫,WRONG,ok\n", encoding="utf-8")
    done = invoke("corrections", "import", str(sheet))
    assert done.exit_code == 0, done.output
    assert done.stdout.strip().startswith("imported 2 corrections") and "4 bad rows" in done.stdout
    problems = sorted(done.stderr.strip().splitlines(), key=lambda p: int(p.split(":")[1]))
    assert [p.split(":")[1] for p in problems] == ["3", "4", "5", "6"], problems
    assert "maybe" in problems[0] and "沙发床" in problems[1] and "tag it first" in problems[2]
    assert "fewer than 3 columns" in problems[3]
    stored = {(r["uri"], r["label"], r["verdict"]) for r in corrections.iter_all(
        engine_for(env))}
    assert stored == {(uris[0], "台灯", "right"), (uris[2], "猫", "wrong")}
    again = tmp_path / "again.csv"
    producer("corrections", "export", "--output", str(again))
    assert invoke("corrections", "import", str(again)).stdout.startswith("imported 2 ")
    missing = tmp_path / "bad.csv"
    missing.write_text("url,tag\nx,y\n", encoding="utf-8")
    assert "uri,label,verdict" in invoke("corrections", "import", str(missing)).output


def test_export_says_a_reviewers_label_wins_even_after_a_later_run(env):
    uris = ["s3://shop/a.jpg", "s3://shop/b.jpg"]
    vectors = {u: np.ones(4, np.float32) for u in uris}
    seed_run(env, uris, LABELS, labels={u: top("台灯", 0.8) for u in uris}, vectors=vectors)
    engine = engine_for(env)
    corrections.add(engine, LABELS.id, "ann", [
        corrections.Correction(content_of(uris[0]), uris[0], "狗", "right"),
        corrections.Correction(content_of(uris[1]), uris[1], "台灯", "wrong")])
    thresholds.put(engine, LABELS.id, TEST_LABELS[1], 0.9, "ann")
    for _ in range(2):  # the second time after a later run scored both again
        rows = exported()
        a, b = rows[uris[0]], rows[uris[1]]
        assert (a["top_label"], a["label_by"], a["unsure"]) == ("狗", "reviewer", False)
        assert a["labels"][0]["label"] == "台灯"  # the model's scores stay
        assert (b["top_label"], b["label_by"], b["rejected"]) == (TEST_LABELS[1], "model",
                                                                  ["台灯"])
        assert b["unsure"] is True  # 0.2 under its threshold of 0.9
        seed_run(env, uris, LABELS, labels={u: top("台灯", 0.7) for u in uris},
                 vectors=vectors)


def test_thresholds_proposed_keep_the_precision(env):
    uris = [f"s3://shop/{i}.jpg" for i in range(5)]
    scores = dict(zip(uris, [0.9, 0.8, 0.7, 0.6, 0.5], strict=True))
    seed_run(env, uris, LABELS, labels={u: top("台灯", s) for u, s in scores.items()},
             vectors={u: np.ones(4, np.float32) for u in uris})
    engine = engine_for(env)
    said = ["right", "right", "wrong", "right", "wrong"]
    corrections.add(engine, LABELS.id, "ann", [
        corrections.Correction(content_of(u), u, "台灯", v) for u, v in zip(uris, said,
                                                                           strict=True)])
    assert thresholds.propose(engine, LABELS.id, LABELS.id, 0.75, "ann") == {"台灯": 0.6}
    assert thresholds.described(engine, LABELS.id)["台灯"]["precision"] == 0.75


def test_a_learned_version_keeps_every_verdict_when_a_worker_scores_it(
        tagger_env, start_worker, tiny_model, labels_file):
    url = tagger_env["DATABASE_URL"]
    model = str(tiny_model)
    rng = np.random.default_rng(5)
    texts = rng.standard_normal((len(TEST_LABELS), 16)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    uris = [f"s3://shop/{i}.jpg" for i in range(40)]
    vectors = {u: v / np.linalg.norm(v) for u, v in zip(
        uris, rng.standard_normal((40, 16)).astype(np.float32), strict=True)}
    zero = {u: int(np.argmax(texts @ v)) for u, v in vectors.items()}
    seed_run(url, uris, LABELS, model=model, vectors=vectors, labels={
        u: top(TEST_LABELS[zero[u]], 0.5) for u in uris})
    engine = engine_for(url)
    model_id = models.find(engine, weights_of(model)).id
    save_text_embeddings(engine, model_id, LABELS.id, "test", *texts.shape, texts.tobytes())
    picked = {u: TEST_LABELS[(zero[u] + 1) % len(TEST_LABELS)] for u in uris[:8]}
    corrections.add(engine, LABELS.id, "ann", [
        corrections.Correction(content_of(u), u, label, "right") for u, label in picked.items()])
    start_worker(tagger_env)
    said = invoke("relabel", "--learn", "--timeout", "120")  # TAGGER_LABELS: the same labels
    assert said.exit_code == 0, said.output
    [version] = learned.versions(engine, LABELS.id)
    assert version.report["contradicted"] == 0 and version.report["verdicts"] == 8
    assert f"label set {version.labelset_id} (a new version of {LABELS.id})" in said.stdout
    assert "cross-validated agreement" in said.stdout and "0 of their own" in said.stdout
    assert learned.root_of(engine, version.labelset_id) == LABELS.id
    rows = exported("--run", version.run_id)
    assert len(rows) == 40
    for uri, label in picked.items():  # the learned label set itself gives them their label
        assert rows[uri]["labels"][0]["label"] == label, uri
    changed = sum(rows[u]["labels"][0]["label"] != TEST_LABELS[zero[u]] for u in uris)
    assert version.changes["images"] == changed >= len(picked)
    assert f"{changed} changed label" in said.stdout
