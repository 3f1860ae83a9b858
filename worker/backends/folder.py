"""TAGGER_MODEL to a local checkpoint folder (a folder, the hub cache, or one download), no torch.

Resolved once, in the worker's parent process: a name that cannot be loaded ends the worker at
start with one message that says what was tried and what to set, instead of a retry storm.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from worker.core.errors import ConfigError
from worker.core.invocation import command, python_module
from worker.core.pixels import Preprocess

HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.bin"]
# One file, or an index of shards (save_pretrained's max_shard_size)
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
           "pytorch_model.bin.index.json")
# transformers 4 saves the image processor alone, transformers 5 inside the processor's file
PROCESSOR = ("preprocessor_config.json", "processor_config.json")
# The hub's OFA-Sys folders hold vocab.txt; transformers 5 saves tokenizer.json instead
TOKENIZER = ("vocab.txt", "tokenizer.json")
NEEDED = ("config.json",)


def offline_help() -> str:
    """What to do without the hub, as a command that runs from where the user is."""
    return ("set TAGGER_MODEL to a local checkpoint folder (to try the tool offline, build a "
            f"small random one: {python_module('worker.checkpoint', './model', '--tiny')})")


class ModelError(ConfigError):
    """TAGGER_MODEL names nothing that can be loaded."""


def resolve(name: str) -> Path:
    """The folder holding ``name``'s files: ``name`` itself, its hub cache, or a download."""
    path = Path(name).expanduser()
    if path.is_dir() or name.startswith((".", "/", "~")) or not HUB_ID.fullmatch(name):
        return check_folder(name, path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        raise ModelError(f"TAGGER_MODEL={name} is not in the Hugging Face cache "
                         f"({_cache_dir()}) and HF_HUB_OFFLINE is set: download it where the hub "
                         f"is reachable (`{command('hf')} download {name}`), or {offline_help()}")
    try:
        return Path(snapshot_download(name, allow_patterns=PATTERNS, etag_timeout=10))
    except Exception as exc:  # no network, unknown repository, gated, rate-limited, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"TAGGER_MODEL={name}: not in the Hugging Face cache and the download "
                         f"failed ({reason}); pre-download it with "
                         f"`{command('hf')} download {name}` and set HF_HUB_OFFLINE=1, or "
                         f"{offline_help()}") from exc


def find_local(name: str) -> Path | None:
    """The checkpoint folder ``name`` names on this machine (a folder, or the hub cache), never
    downloaded: None where it is not here (a producer on a machine of its own)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if name.startswith((".", "/", "~")) or not HUB_ID.fullmatch(name):
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=PATTERNS, local_files_only=True))
    except Exception:  # not cached here: the hub's errors have no common type worth naming
        return None


def check_folder(name: str, path: Path) -> Path:
    if not path.is_dir():
        raise ModelError(f"TAGGER_MODEL={name}: no such folder, and not a hub id like "
                         f"OFA-Sys/chinese-clip-vit-base-patch16; {offline_help()}")
    missing = [f for f in NEEDED if not (path / f).is_file()]
    missing += [" or ".join(names) for names in (WEIGHTS, TOKENIZER, PROCESSOR)
                if not any((path / f).is_file() for f in names)]
    if missing:
        raise ModelError(f"TAGGER_MODEL={name}: the folder lacks {', '.join(missing)}; it must "
                         "hold a Chinese CLIP checkpoint saved with save_pretrained (model, "
                         "tokenizer and image processor)")
    return path.resolve()


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def read_preprocess(folder: Path) -> Preprocess:
    """Size, crop, resampling and normalisation from the checkpoint's image processor config."""
    path = next(folder / f for f in PROCESSOR if (folder / f).is_file())
    config = json.loads(path.read_text(encoding="utf-8"))
    config = config.get("image_processor", config)
    size = config.get("size") or {}
    common = {"resample": int(config.get("resample", 3)),
              "mean": tuple(config["image_mean"]), "std": tuple(config["image_std"])}
    if "shortest_edge" in size:
        crop = config.get("crop_size") or {}
        edge = int(size["shortest_edge"])
        return Preprocess(height=int(crop.get("height", edge)), width=int(crop.get("width", edge)),
                          shortest_edge=edge, **common)
    return Preprocess(height=int(size["height"]), width=int(size["width"]), **common)
