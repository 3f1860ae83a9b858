"""What a result is believed to be, on real processes (Redis, PostgreSQL, Celery workers): a model
is its weights, not its path; a chunk message is never believed about content."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from producer.sending import send
from testkit.commands import producer, rows, run_id, wait_for_results
from testkit.images import image_bytes
from testkit.models import TEST_LABELS, direct_scores
from worker.checkpoint import build
from worker.core.contract import KEPT_RUNTIME, Chunk, Item
from worker.core.embedding import sha256_of
from worker.core.labels import load_labelset
from worker.core.settings import LABELSETS, load_settings
from worker.db import labelsets
from worker.db.schema import engine_for

pytestmark = pytest.mark.timeout(600)
IMAGES = 6
SECOND = ["连衣裙", "台灯", "运动鞋", "手提包", "沙发", "冰箱"]


def pictures(folder: Path) -> list[bytes]:
    folder.mkdir(exist_ok=True)
    data = [image_bytes(300 + i) for i in range(IMAGES)]
    for i, picture in enumerate(data):
        (folder / f"{i}.png").write_bytes(picture)
    return data


def assert_scored_by(model: Path, labels: list[str], stored: dict, data: list[bytes]) -> None:
    """Each stored top-k is what the checkpoint now in ``model`` says (transformers' own)."""
    truth = direct_scores(model, labels, data)
    for uri, row in stored.items():
        expected = truth[int(Path(uri).stem)]
        assert row.status == "done", (uri, row.error)
        for entry in row.labels:
            assert entry["score"] == pytest.approx(expected[entry["label"]], abs=0.01), uri


def test_a_model_is_its_weights_not_its_path(tagger_env, start_worker, tmp_path, monkeypatch):
    """Tag; replace model.safetensors under the same path (same size, mtime kept); restart the
    worker; tag again: labels come from the new weights, the text tower runs again, the kept
    embeddings of the old weights are not used, and `runs` says which weights did what."""
    texts = [p.read_text(encoding="utf-8") for p in LABELSETS.glob("*.txt")]
    model = build(tmp_path / "model", [*texts, *TEST_LABELS, *SECOND], tiny=True)
    other = build(tmp_path / "other", [*texts, *TEST_LABELS, *SECOND], tiny=True, seed=1)
    env = {**tagger_env, "TAGGER_MODEL": str(model)}
    monkeypatch.setenv("TAGGER_MODEL", str(model))  # the producer, in this process
    folder = tmp_path / "images"
    data = pictures(folder)
    url = env["DATABASE_URL"]
    first = start_worker(env)
    before = run_id(producer("enqueue", str(folder)))
    producer("wait", "--run", before, "--timeout", "120")
    assert_scored_by(model, TEST_LABELS, rows(url, run_id=before), data)
    first.kill()

    shutil.copy2(other / "model.safetensors", model / "model.safetensors")
    second = start_worker(env)
    assert "encoded" in second.log(), "the default label set's text embeddings were reused"
    second_labels = tmp_path / "second.txt"
    second_labels.write_text("\n".join(SECOND) + "\n", encoding="utf-8")
    # Another label set: the old weights' kept embeddings of these images must not be used.
    nightly = run_id(producer("enqueue", str(folder), "--labels", str(second_labels)))
    producer("wait", "--run", nightly, "--timeout", "120")
    scored = rows(url, run_id=nightly)
    assert {row.runtime for row in scored.values()} == {"torch float32 cpu"}
    assert_scored_by(model, SECOND, scored, data)
    # The first label set again: tagged by the old weights is not tagged by these.
    again = producer("enqueue", str(folder))
    assert re.search(rf"enqueued {IMAGES}\b", again), again
    producer("wait", "--run", run_id(again), "--timeout", "120")
    assert_scored_by(model, TEST_LABELS, rows(url, run_id=run_id(again)), data)

    listed = producer("runs", "--limit", "3")
    digests = re.findall(r"weights ([0-9a-f]{12})", listed)
    assert len(digests) == 3 and len(set(digests)) == 2, listed  # old, then new twice
    status = producer("status", "--run", before)
    assert f"weights {digests[-1]}" in status, status


def test_a_chunk_message_is_not_believed_about_content(tagger_env, start_worker, tmp_path,
                                                       monkeypatch):
    """A hand-made chunk gives other URIs the content hash of an image tagged before: none of
    them gets its labels; each goes through the checks of a fetch (file roots, addresses)."""
    roots = tmp_path / "images"
    monkeypatch.setenv("TAGGER_FILE_ROOTS", str(roots))
    env = {**tagger_env, "TAGGER_FILE_ROOTS": str(roots)}
    start_worker(env)
    data = pictures(roots)
    tagged, other = str(roots / "0.png"), str(roots / "1.png")
    settings = load_settings()
    labelset = load_labelset(settings.labels_path)
    labelsets.save_labelset(engine_for(settings.database_url), labelset)

    def chunk(items: list[Item]) -> Chunk:
        return Chunk(items=tuple(items), model=settings.model, labelset_id=labelset.id)

    send(settings, chunk([Item(tagged)]))
    url = settings.database_url
    genuine = wait_for_results(url, [tagged], 120)[tagged]
    content = sha256_of(data[0])
    assert (genuine.status, genuine.content_sha256) == ("done", content)

    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    forged = ["file:///etc/shadow", "/etc/hostname", metadata, other, tagged]
    send(settings, chunk([Item(uri, sha256=content) for uri in forged]))
    found = wait_for_results(url, [tagged, *forged[:-1]], 120)
    for uri in forged[:2]:
        assert (found[uri].status, found[uri].reason) == ("failed", "outside-roots"), uri
    assert (found[metadata].status, found[metadata].reason) == ("failed", "blocked-address")
    # A file that may be read is read: its own content and labels, not the ones claimed.
    assert found[other].content_sha256 == sha256_of(data[1])
    assert found[other].runtime != KEPT_RUNTIME
    # The image whose own result says it has that content may be scored from its embedding.
    assert found[tagged].status == "done" and found[tagged].content_sha256 == content
