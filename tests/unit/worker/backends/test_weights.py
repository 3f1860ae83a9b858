"""A checkpoint's identity is the digest of its files' bytes: computed once per file version,
changed by any replaced file, however it was copied."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from worker.backends import weights
from worker.backends.weights import checkpoint_digest, checkpoint_files


def checkpoint(folder: Path, weight: bytes = b"\x01" * 4096) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "vocab.txt", "preprocessor_config.json", "README.md"):
        (folder / name).write_text("{}")
    (folder / "model.safetensors").write_bytes(weight)
    return folder


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose bytes are read (the real hash, counted)."""
    read: list[str] = []

    def counted(path: Path) -> str:
        read.append(path.name)
        return real(path)

    real = weights.file_sha256
    monkeypatch.setattr(weights, "file_sha256", counted)
    return read


def test_the_same_files_are_the_same_model_and_are_read_once(
        tmp_path: Path, hashed: list[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(weights, "RACY_NS", 0)  # files written just now: trusted all the same
    first = checkpoint_digest(checkpoint(tmp_path / "a"), tmp_path / "cache")
    assert sorted(hashed) == ["config.json", "model.safetensors", "preprocessor_config.json",
                              "vocab.txt"]  # what loading reads, not the README
    hashed.clear()
    assert checkpoint_digest(tmp_path / "a", tmp_path / "cache") == first
    assert hashed == []  # unchanged files: their hashes come from the cache
    elsewhere = checkpoint_digest(checkpoint(tmp_path / "b"), tmp_path / "cache")
    assert elsewhere.digest == first.digest  # the same weights under another path


def test_weights_replaced_with_their_size_and_mtime_are_another_model(tmp_path: Path,
                                                                       hashed: list[str]):
    folder = checkpoint(tmp_path / "model")
    before = checkpoint_digest(folder, tmp_path / "cache")
    other = checkpoint(tmp_path / "other", weight=b"\x02" * 4096)
    stat = (folder / "model.safetensors").stat()
    shutil.copy2(other / "model.safetensors", folder / "model.safetensors")
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (folder / "model.safetensors").stat().st_size == stat.st_size
    # Within the same tick of the file system's clock, even its ctime may be as it was: a file
    # hashed that soon after it changed is hashed again.
    after = checkpoint_digest(folder, tmp_path / "cache")
    assert after.digest != before.digest and after.changed_at >= before.changed_at
    assert hashed.count("model.safetensors") == 2


def test_shards_named_by_an_index_are_part_of_the_model(tmp_path: Path):
    folder = checkpoint(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in set(index["weight_map"].values()):
        (folder / name).write_bytes(name.encode())
    names = [p.name for p in checkpoint_files(folder)]
    assert set(index["weight_map"].values()) < set(names)
    before = checkpoint_digest(folder, tmp_path / "cache").digest
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"other")
    assert checkpoint_digest(folder, tmp_path / "cache").digest != before


def test_a_torn_cache_file_is_hashed_again(tmp_path: Path):
    folder = checkpoint(tmp_path / "model")
    first = checkpoint_digest(folder, tmp_path / "cache")
    (tmp_path / "cache" / weights.CACHE_FILE).write_text("{not json")
    assert checkpoint_digest(folder, tmp_path / "cache") == first
