"""TAGGER_MODEL to a checkpoint folder, without torch: one-line errors that say what to set."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from worker.backends.folder import ModelError, read_preprocess, resolve
from worker.core.errors import ConfigError
from worker.core.pixels import Preprocess

FILES = ("config.json", "vocab.txt", "model.safetensors", "preprocessor_config.json")


def checkpoint(folder: Path, files: tuple[str, ...] = FILES, processor: dict | None = None
               ) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_text("{}")
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def model_error(name: str) -> str:
    with pytest.raises(ModelError) as info:
        resolve(name)
    assert isinstance(info.value, ConfigError)  # shown as one line, the worker refuses to start
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"TAGGER_MODEL={name}")
    return text


def test_a_complete_folder_resolves(tmp_path: Path):
    folder = checkpoint(tmp_path / "model")
    assert resolve(str(folder)) == folder.resolve()


def test_missing_or_incomplete_folders(tmp_path: Path):
    assert "no such folder" in model_error(str(tmp_path / "missing"))
    # The interpreter that has this installation, not whatever `python` the shell finds.
    runner = model_error("./not/here").partition(" -m worker.checkpoint ./model --tiny")[0]
    runner = runner.rpartition(" ")[2]
    assert os.path.abspath(shutil.which(runner) or "") == os.path.abspath(sys.executable)
    folder = checkpoint(tmp_path / "half", ("config.json",))
    error = model_error(str(folder))
    assert "vocab.txt" in error and "model.safetensors or pytorch_model.bin" in error
    assert "config.json," not in error


def test_a_hub_id_offline_and_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    error = model_error("OFA-Sys/chinese-clip-vit-base-patch16")
    assert "HF_HUB_OFFLINE is set" in error and str(tmp_path / "hf") in error


def test_preprocess_from_the_processor_config(tmp_path: Path):
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    squash = checkpoint(tmp_path / "a", processor={
        "size": {"height": 224, "width": 224}, "resample": 3, "image_mean": mean,
        "image_std": std})
    assert read_preprocess(squash) == Preprocess(224, 224, 3, None, (0.5,) * 3, (0.25,) * 3)
    # transformers 5 nests it in processor_config.json; CLIP-style: short side, then crop.
    crop = checkpoint(tmp_path / "b", ("config.json",))
    (crop / "processor_config.json").write_text(json.dumps({"image_processor": {
        "size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
        "resample": 2, "image_mean": mean, "image_std": std}}))
    assert read_preprocess(crop) == Preprocess(224, 224, 2, 256, (0.5,) * 3, (0.25,) * 3)
