"""The ONNX towers a search runs (no torch): found in the cache, or exported once by a process
that has torch (``python -m worker.backends.search_towers``), then loaded in ONNX Runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.backends.folder import resolve
from worker.backends.weights import checkpoint_digest
from worker.core.errors import ConfigError
from worker.core.pixels import Preprocess
from worker.core.settings import Settings

MANIFEST = "search.json"  # written by worker/backends/search_towers.py
EXPORT_TIMEOUT = 1800  # seconds: the full-size towers take under a minute on 2 cores


@dataclass(frozen=True)
class Towers:
    """The cached files of one checkpoint and what a query needs to know about them."""

    folder: Path
    image: Path
    text: Path
    tokenizer: Path
    preprocess: Preprocess
    text_length: int
    dim: int


def _read(folder: Path) -> Towers | None:
    """The manifest's towers, or None where it or a file it names is missing or torn."""
    try:
        meta = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        for key, size in meta["sizes"].items():
            if (folder / meta[key]).stat().st_size != size:
                return None
        spec = meta["preprocess"]
        return Towers(folder, folder / meta["image"], folder / meta["text"],
                      folder / meta["tokenizer"],
                      Preprocess(**{**spec, "mean": tuple(spec["mean"]),
                                    "std": tuple(spec["std"])}),
                      int(meta["text_length"]), int(meta["dim"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def towers(settings: Settings, note: Callable[[str], None]) -> Towers:
    """This checkpoint's towers, exported first (in a process of its own) where missing."""
    weights = checkpoint_digest(resolve(settings.model), settings.cache_dir).digest
    folder = settings.cache_dir / "onnx" / weights[:16]  # as ModelCache names it
    found = _read(folder)
    if found is not None:
        return found
    note(f"exporting {settings.model}'s towers to ONNX for search (once per host and model)")
    try:
        done = subprocess.run([sys.executable, "-m", "worker.backends.search_towers"],
                              capture_output=True, text=True, timeout=EXPORT_TIMEOUT,
                              env=os.environ.copy(), check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"exporting the towers to ONNX took over {EXPORT_TIMEOUT} s") from None
    found = _read(folder)
    if done.returncode or found is None:
        lines = (done.stderr or done.stdout or "no output").strip().splitlines()
        raise ConfigError(f"exporting the towers to ONNX failed: {lines[-1]}")
    return found


def session(path: Path) -> Any:
    """An ONNX Runtime session on the CPU with every core, its threads never spinning while
    they wait (imported here: only queries pay). On this busy 2-core machine spinning threads
    took a short query on the int8 text tower from ~15 ms to ~250 ms p50: each waits for the
    other while a third process holds the core (docs/performance.md)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
