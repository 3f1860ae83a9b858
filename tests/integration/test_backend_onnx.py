"""The ONNX Runtime backend and ``auto`` on the tiny model: real exports, runtimes and processes.

Measured here (tiny random model, 16 probe images): float32 agrees with torch float32 to a
cosine of 1.0 (to 1e-6), int8 to 0.9998-0.9999; float16 runs on the CPU provider at 0.99999+.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from worker.backends import BACKENDS, BackendPart
from worker.backends import choose as choose_module
from worker.backends.choose import MIN_COSINE, candidate_names, load_backend, probe_images
from worker.backends.onnx_clip import OnnxBackend
from worker.backends.onnx_export import ModelCache, export_float32, quiet
from worker.backends.remembered import choice_key, recall
from worker.backends.torch_clip import TorchBackend, cpu_has_amx
from worker.backends.weights import checkpoint_digest, file_sha256
from worker.core.errors import ConfigError
from worker.core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
BUILT = "built the ONNX float32 image tower"
# A worker process as far as the ONNX cache is concerned: load the backend, log to stderr.
CHILD = """
import logging, sys
from pathlib import Path
from typing import Any
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from worker.backends.onnx_clip import OnnxBackend
from worker.backends.remembered import choice_key, recall
from worker.core.settings import load_settings
OnnxBackend(load_settings(), Path(sys.argv[1]), "float32")
"""


def settings_for(cache: Path, **env: str) -> Settings:
    return load_settings({"TAGGER_CACHE_DIR": str(cache), "TAGGER_DEVICE": "cpu",
                          "TAGGER_BATCH_SIZE": "4", **env})


def worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def start_child(model: Path, cache: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TAGGER_CACHE_DIR": str(cache), "TAGGER_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", CHILD, str(model)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def wait_for_text(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the tiny tower is exported once, by the first test."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tiny_model: Path, cache: Path) -> TorchBackend:
    return TorchBackend(settings_for(cache), tiny_model, "float32")


@pytest.fixture(scope="module")
def probe(reference: TorchBackend) -> list[np.ndarray]:
    return probe_images(reference.preprocess, 16)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choose_module, "ROUND_SECONDS", 0.02)


def test_float32_matches_torch(tiny_model: Path, cache: Path, reference: TorchBackend,
                               probe: list[np.ndarray]) -> None:
    backend = OnnxBackend(settings_for(cache), tiny_model, "float32")
    assert backend.description == f"onnx float32 cpu (onnxruntime {ort.__version__})"
    assert backend.text_encoder == reference.text_encoder == "torch float32"
    assert backend.text.model.vision_model is None  # its own torch model keeps only texts
    assert worst_cosine(backend.encode_images(probe), reference.encode_images(probe)) > 0.99999
    texts = [["猫的照片。", "一张猫。"], ["狗的照片。", "一张狗。"]]
    assert np.allclose(backend.encode_texts(texts), reference.encode_texts(texts), atol=1e-6)
    # Pixels decoded on a GPU arrive as (3, H, W) tensors: the same rows through io-binding.
    tensors = [torch.from_numpy(p).permute(2, 0, 1) for p in probe[:4]]
    assert np.allclose(backend.encode_images(tensors), backend.encode_images(probe[:4]),
                       atol=1e-6)
    # Exported with a batch of 2: the batch axis must be free, one image included.
    assert np.allclose(backend.encode_images(probe[:1]), backend.encode_images(probe)[:1],
                       atol=1e-5)


def test_int8_is_close_to_torch(tiny_model: Path, cache: Path, reference: TorchBackend,
                                probe: list[np.ndarray]) -> None:
    backend = OnnxBackend(settings_for(cache), tiny_model, "int8", reference=reference)
    assert backend.description.startswith("onnx int8 cpu")
    # 0.9998-0.9999 measured on the tiny model; a broken quantisation lands far below.
    assert worst_cosine(backend.encode_images(probe), reference.encode_images(probe)) > 0.999
    assert reference.model.vision_model is not None  # a shared torch model is left whole


def test_float16_conversion_runs_on_the_cpu_provider(tiny_model: Path, cache: Path,
                                                     reference: TorchBackend,
                                                     probe: list[np.ndarray]) -> None:
    # No GPU here: the conversion is checked through the CPU provider, which runs it too.
    path = ModelCache(cache / "onnx", checkpoint_digest(tiny_model, cache).digest,
                      lambda: reference.model,
                      reference.preprocess, reference.encode_images).get("float16")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = session.run(None, {"pixels": np.stack(probe)})[0]
    assert rows.dtype == np.float32
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    assert worst_cosine(rows, reference.encode_images(probe)) > 0.999


def test_export_falls_back_to_the_torchscript_exporter(
        reference: TorchBackend, probe: list[np.ndarray], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    export = torch.onnx.export

    def without_dynamo(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dynamo"):
            raise RuntimeError("an operator torch.export cannot trace")
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", without_dynamo)
    with quiet():
        export_float32(reference.model, reference.preprocess, tmp_path / "tower.onnx")
    session = ort.InferenceSession(str(tmp_path / "tower.onnx"),
                                   providers=["CPUExecutionProvider"])
    rows = session.run(None, {"pixels": np.stack(probe)})[0]
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    assert worst_cosine(rows, reference.encode_images(probe)) > 0.99999


def test_another_process_reuses_the_cached_file(tiny_model: Path, cache: Path,
                                                reference: TorchBackend, tmp_path: Path) -> None:
    OnnxBackend(settings_for(cache), tiny_model, "float32", reference=reference)
    (path,) = (cache / "onnx").glob("*/float32-*.onnx")
    before = path.stat().st_mtime_ns
    child = start_child(tiny_model, cache, tmp_path / "child.log")
    assert child.wait(timeout=180) == 0, (tmp_path / "child.log").read_text()
    log = (tmp_path / "child.log").read_text()
    assert "ONNX float32 image tower from the cache" in log and BUILT not in log
    assert path.stat().st_mtime_ns == before


def test_processes_starting_together_export_once(tiny_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    folder = cache / "onnx" / checkpoint_digest(tiny_model, cache).digest[:16]
    folder.mkdir(parents=True)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with open(folder / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # both must then meet at the lock, whatever the timing
        children = [start_child(tiny_model, cache, log) for log in logs]
        for log in logs:
            wait_for_text(log, "waiting for another process", timeout=120)
    for child, log in zip(children, logs, strict=True):
        assert child.wait(timeout=180) == 0, log.read_text()
    texts = [log.read_text() for log in logs]
    assert sum(text.count(BUILT) for text in texts) == 1, texts
    assert len(list(folder.glob("float32-*.onnx"))) == 1 and not list(folder.glob(".*.tmp"))


def test_a_damaged_cached_file_is_rebuilt(tiny_model: Path, cache: Path, tmp_path: Path,
                                          reference: TorchBackend, probe: list[np.ndarray],
                                          caplog: pytest.LogCaptureFixture) -> None:
    OnnxBackend(settings_for(cache), tiny_model, "int8", reference=reference)
    own = tmp_path / "cache"
    shutil.copytree(cache, own)
    (folder,) = (own / "onnx").iterdir()
    (float32,) = folder.glob("float32-*.onnx")
    (int8,) = folder.glob("int8-*.onnx")
    with open(float32, "r+b") as file:  # torn: a crash in the middle of a copy
        file.truncate(float32.stat().st_size // 2)
    int8.with_suffix(".json").unlink()  # killed between the rename and the sidecar
    (folder / ".int8.onnx.123.tmp").write_bytes(b"left by a killed writer")
    with caplog.at_level(logging.INFO, logger="worker.backends"):
        backend = OnnxBackend(settings_for(own), tiny_model, "int8", reference=reference)
    assert caplog.text.count("is damaged") == 2 and BUILT in caplog.text
    assert "built the ONNX int8 image tower" in caplog.text
    assert not list(folder.glob(".*.tmp"))
    assert worst_cosine(backend.encode_images(probe), reference.encode_images(probe)) > 0.999


def replace_with_another_tower(path: Path, reference: TorchBackend) -> None:
    """What an attacker or a bad copy leaves: another model's tower, with a sidecar to match."""
    other = copy.deepcopy(reference.model)
    with torch.no_grad():
        other.visual_projection.weight.copy_(torch.randn_like(other.visual_projection.weight))
    with quiet():
        export_float32(other, reference.preprocess, path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta.update(sha256=file_sha256(path), size=path.stat().st_size)
    path.with_suffix(".json").write_text(json.dumps(meta))


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_a_replaced_cached_file_is_deleted_and_rebuilt(
        tiny_model: Path, cache: Path, tmp_path: Path, reference: TorchBackend,
        probe: list[np.ndarray], caplog: pytest.LogCaptureFixture, precision: str) -> None:
    OnnxBackend(settings_for(cache), tiny_model, "float32", reference=reference)
    own = tmp_path / "cache"
    shutil.copytree(cache, own)
    (folder,) = (own / "onnx").iterdir()
    (float32,) = folder.glob("float32-*.onnx")
    replace_with_another_tower(float32, reference)
    replaced = file_sha256(float32)
    for int8 in folder.glob("int8-*"):  # int8 is then built from the replaced float32
        int8.unlink()
    settings = settings_for(own, TAGGER_BACKEND="onnx", TAGGER_PRECISION=precision)
    with caplog.at_level(logging.INFO, logger="worker.backends"):
        backend = load_backend(settings, tiny_model)
    assert "does not compute what was built" in caplog.text and BUILT in caplog.text
    assert file_sha256(float32) != replaced  # deleted, then built again from torch
    assert worst_cosine(backend.encode_images(probe), reference.encode_images(probe)) > 0.999


@pytest.fixture
def unmeasured(cache: Path, tmp_path: Path) -> Path:
    """The module's cache (its ONNX files) with no backend choice remembered in it."""
    own = tmp_path / "unmeasured"
    shutil.copytree(cache, own, ignore=shutil.ignore_patterns("backends"))
    return own


def test_auto_measures_and_keeps_the_fastest_accurate(
        tiny_model: Path, unmeasured: Path, quick: None, caplog: pytest.LogCaptureFixture
        ) -> None:
    with caplog.at_level(logging.INFO, logger="worker.backends"):
        backend = load_backend(settings_for(unmeasured, TAGGER_BACKEND="auto"), tiny_model)
    candidates = backend.candidates  # type: ignore[attr-defined]
    names = [c["name"] for c in candidates]
    # bfloat16 is a candidate only on a CPU with AMX tiles (torch_clip.auto_candidates)
    bf16 = ["torch bfloat16"] if cpu_has_amx() else []
    assert names[:3 + len(bf16)] == ["torch float32", *bf16, "onnx float32", "onnx int8"]
    assert all(c["images_per_second"] > 0 and c["min_cosine"] > MIN_COSINE for c in candidates)
    assert candidates[0]["min_cosine"] == pytest.approx(1.0, abs=1e-6)
    (kept,) = [c for c in candidates if c["kept"]]
    accurate = [c for c in candidates if c["min_cosine"] >= MIN_COSINE]
    assert kept["images_per_second"] == max(c["images_per_second"] for c in accurate)
    assert backend.description.startswith(kept["name"])
    assert caplog.text.count("backend candidate") == len(candidates)
    assert "backend auto chose" in caplog.text


# A worker process as far as `auto` is concerned: choose a backend, log to stderr.
CHOOSE = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from worker.backends.choose import load_backend
from worker.core.settings import load_settings
print(load_backend(load_settings(), Path(sys.argv[1])).description)
"""


def choose_in_a_process(model: Path, cache: Path, **env: str) -> tuple[str, str]:
    """(the backend chosen, the log) of a new process choosing with ``auto``."""
    done = subprocess.run(
        [sys.executable, "-c", CHOOSE, str(model)], cwd=ROOT, capture_output=True, text=True,
        timeout=600, env={**os.environ, "TAGGER_CACHE_DIR": str(cache), "TAGGER_DEVICE": "cpu",
                          "TAGGER_BATCH_SIZE": "4", "TAGGER_BACKEND": "auto",
                          "OMP_NUM_THREADS": "1", **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


MEASURED = "candidates measured in"


@pytest.mark.timeout(900)  # three processes, each loading torch, two of them measuring
def test_auto_measures_once_per_machine_weights_runtimes_and_batch(
        tiny_model: Path, unmeasured: Path, tmp_path: Path) -> None:
    """Before: every start measured every candidate (~95 s on the full-size model on a CPU)."""
    first, log = choose_in_a_process(tiny_model, unmeasured)
    assert MEASURED in log and log.count("backend candidate") >= 3, log
    assert len(list((unmeasured / "backends").glob("*.json"))) == 1
    again, log = choose_in_a_process(tiny_model, unmeasured)
    assert again == first and "as measured on this machine at" in log, log
    assert MEASURED not in log and "backend candidate" not in log, log
    # Other weights (the digest of the files' bytes): measured again, remembered apart.
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (weights,) = model.glob("model.safetensors")
    with weights.open("r+b") as tensors:  # the last byte is a weight's: still a checkpoint
        tensors.seek(-1, os.SEEK_END)
        last = tensors.read(1)
        tensors.seek(-1, os.SEEK_END)
        tensors.write(bytes([last[0] ^ 1]))
    _, log = choose_in_a_process(model, unmeasured)
    assert MEASURED in log, log
    assert len(list((unmeasured / "backends").glob("*.json"))) == 2


def test_a_changed_key_or_a_broken_choice_is_measured_again(
        tiny_model: Path, unmeasured: Path, quick: None, caplog: pytest.LogCaptureFixture
        ) -> None:
    settings = settings_for(unmeasured, TAGGER_BACKEND="auto")
    load_backend(settings, tiny_model)
    (remembered,) = (unmeasured / "backends").glob("*.json")
    record = json.loads(remembered.read_text(encoding="utf-8"))
    names = record["key"]["candidates"]
    key = choice_key(tiny_model, unmeasured, torch.device("cpu"), 4, names)
    assert recall(unmeasured, key) == record
    for changed in (choice_key(tiny_model, unmeasured, torch.device("cpu"), 8, names),  # the batch
                    {**key, "machine": {**key["machine"], "flags": "avx2"}},
                    {**key, "runtimes": {**key["runtimes"], "onnxruntime": "1.0"}}):
        assert recall(unmeasured, changed) is None
    # A remembered choice that no longer loads is measured again, not a dead end.
    remembered.write_text(json.dumps({**record, "kept": "onnx float64"}), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="worker.backends"):
        load_backend(settings, tiny_model)
    assert "chosen here before, does not load" in caplog.text and MEASURED in caplog.text


def test_auto_precision_narrows_the_candidates(tiny_model: Path, cache: Path,
                                               quick: None) -> None:
    settings = settings_for(cache, TAGGER_BACKEND="auto", TAGGER_PRECISION="float32")
    backend = load_backend(settings, tiny_model)
    assert [c["name"] for c in backend.candidates] == ["torch float32", "onnx float32"]  # type: ignore[attr-defined]


def test_auto_falls_back_to_torch_float32(tiny_model: Path, cache: Path, quick: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(OnnxBackend):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("no runtime today")

    monkeypatch.setattr(BACKENDS, "_entries", dict(BACKENDS._entries))  # undone after
    monkeypatch.setattr(BACKENDS, "_loaded", {})
    BACKENDS.register("onnx", BackendPart(Broken, precisions=("float32", "int8")))
    monkeypatch.setattr(choose_module, "MIN_COSINE", 1.5)  # nothing is accurate enough
    backend = load_backend(settings_for(cache, TAGGER_BACKEND="auto"), tiny_model)
    assert backend.description == "torch float32 cpu"
    candidates = backend.candidates  # type: ignore[attr-defined]
    onnx = [c for c in candidates if c["name"].startswith("onnx")]
    assert [c["error"] for c in onnx] == ["RuntimeError: no runtime today"] * 2
    assert not any(c["kept"] for c in candidates)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has the CUDA provider")
def test_float16_without_the_cuda_provider_is_a_config_error(tiny_model: Path,
                                                             tmp_path: Path) -> None:
    settings = load_settings({"TAGGER_BACKEND": "onnx", "TAGGER_PRECISION": "float16",
                              "TAGGER_CACHE_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"CUDAExecutionProvider.*onnxruntime-gpu"):
        load_backend(settings, tiny_model)
    assert not (tmp_path / "onnx").exists()  # refused before any work


def test_precisions_the_onnx_backend_refuses(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TAGGER_BACKEND=torch"):
        OnnxBackend(settings_for(tmp_path), tiny_model, "bfloat16")
    with pytest.raises(ConfigError, match="int8 runs on the CPU"):
        candidate_names("int8", torch.device("cuda"))


def test_the_probe_is_deterministic_and_photo_like(reference: TorchBackend) -> None:
    first, again = (probe_images(reference.preprocess, 8) for _ in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert {image.shape for image in first} == {(32, 32, 3)}
    assert min(float(image.std()) for image in first) > 5  # not flat colour
    assert len({image.tobytes() for image in first}) == 8


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
