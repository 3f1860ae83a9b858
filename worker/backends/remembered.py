"""``auto``'s choice, remembered per machine, weights, runtime versions and batch: measured once.

Measuring every candidate on the full-size model takes a minute and a half on a CPU; the answer
only changes when what was measured changes. The key holds all of it (the processor and its
flags or the GPU's name, the weights' digest, the runtime versions, the batch size, the
candidates and the accuracy bar), so any change of one is a new key and a new measurement.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy
import onnxruntime
import torch
import transformers

from worker.backends.probe import MIN_COSINE
from worker.backends.weights import atomic_path, checkpoint_digest

log = logging.getLogger(__name__)
VERSION = 1  # bump when what a measurement means changes: older choices are measured again


def machine(device: torch.device) -> dict[str, Any]:
    """What the speed of each runtime depends on here: the GPU, or the CPU and its threads."""
    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                "capability": list(torch.cuda.get_device_capability(device))}
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() in {"model name", "flags"}:
                    found.setdefault(name.strip(), value.strip())
    except OSError:  # not Linux: the platform's own description
        found["model name"] = platform.processor() or platform.machine()
    return {"cpu": found.get("model name", ""), "flags": found.get("flags", ""),
            "cores": os.cpu_count(), "threads": torch.get_num_threads()}


def choice_key(folder: Path, cache_dir: Path, device: torch.device, batch_size: int,
               names: list[str]) -> dict[str, Any]:
    return {"version": VERSION, "machine": machine(device),
            "weights": checkpoint_digest(folder, cache_dir).digest,
            "runtimes": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         "transformers": transformers.__version__, "numpy": numpy.__version__},
            "batch": batch_size, "candidates": names, "min_cosine": MIN_COSINE}


def _path(cache_dir: Path, key: dict[str, Any]) -> Path:
    text = json.dumps(key, sort_keys=True).encode("utf-8")
    return cache_dir / "backends" / f"{hashlib.sha256(text).hexdigest()[:24]}.json"


def recall(cache_dir: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The choice measured under exactly this key, or None (never measured, or unreadable)."""
    try:
        found = json.loads(_path(cache_dir, key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or found.get("key") != key or not found.get("kept"):
        return None
    return found


def remember(cache_dir: Path, key: dict[str, Any], kept: str,
             candidates: list[dict[str, Any]]) -> None:
    """Keep the choice for the next start; a cache that cannot be written only costs time."""
    path = _path(cache_dir, key)
    record = {"key": key, "kept": kept, "candidates": candidates,
              "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(record, indent=1), encoding="utf-8")
    except OSError as exc:
        log.warning("could not remember the backend choice in %s (%s): the next start "
                    "measures again", path, exc)
