"""What identifies a checkpoint: the SHA-256 of the files loading it reads, each file's hash
remembered by its (path, size, mtime, ctime, inode) so that a worker's start reads no byte twice.

The one place a model's identity is computed: results, kept embeddings, text embeddings and the
ONNX cache are all keyed by it, never by the folder's path or the hub id that named it. No torch
here: the producer computes it too, where the checkpoint is on its machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from worker.backends.folder import PROCESSOR, TOKENIZER, WEIGHTS

# What from_pretrained reads besides the weights: a change in any changes what is computed.
CONFIGS = ("config.json", *PROCESSOR, *TOKENIZER, "tokenizer_config.json",
           "special_tokens_map.json", "added_tokens.json")
CACHE_FILE = "file-digests.json"
# A file changed this close to when it was hashed may change again within the same tick of the
# file system's clock, leaving size, times and inode as they were: it is hashed again (as git
# treats "racy" index entries).
RACY_NS = 2 * 10**9
SHORT = 12  # hex digits shown to people (`status`, `runs`, the report)


@dataclass(frozen=True)
class Weights:
    """A checkpoint's digest (64 hex digits) and when its newest file last changed on disk."""

    digest: str
    changed_at: datetime

    @property
    def short(self) -> str:
        return self.digest[:SHORT]


def short(digest: str | None) -> str:
    """The digest as people see it; a model from before digests were kept has none."""
    return digest[:SHORT] if digest else "unknown"


def checkpoint_files(folder: Path) -> list[Path]:
    """The files loading the checkpoint reads: configs, tokenizer, weights and their shards."""
    names = [name for name in (*CONFIGS, *WEIGHTS) if (folder / name).is_file()]
    for index in (n for n in names if n.endswith(".index.json")):
        shards = json.loads((folder / index).read_text(encoding="utf-8")).get("weight_map", {})
        names += sorted({name for name in shards.values()  # files of this folder only
                         if isinstance(name, str) and Path(name).name == name} - set(names))
    return [folder / name for name in names]


def checkpoint_digest(folder: Path, cache_dir: Path) -> Weights:
    """The digest of ``folder``'s checkpoint: SHA-256 over each file's name and SHA-256.

    A file's hash is read from ``cache_dir`` while its size, times and inode are unchanged (a
    replaced file has a new ctime and usually a new inode, even when copied with its mtime).
    """
    cache = _load(cache_dir / CACHE_FILE)
    digest, newest, changed = hashlib.sha256(), 0, False
    for path in checkpoint_files(folder):
        real = os.path.realpath(path)  # hub snapshots link to blobs: key what is read
        info = os.stat(real)
        stamp = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]
        if not _fresh(cache.get(real), stamp):
            hashed_at = time.time_ns()
            cache[real], changed = [*stamp, hashed_at, file_sha256(Path(real))], True
        digest.update(f"{path.name}\0{cache[real][-1]}\n".encode())
        newest = max(newest, info.st_ctime_ns, info.st_mtime_ns)
    if changed:
        _save(cache_dir / CACHE_FILE, cache)
    return Weights(digest.hexdigest(), datetime.fromtimestamp(newest / 1e9, UTC))


def _fresh(known: object, stamp: list[int]) -> bool:
    """A cache entry [size, mtime, ctime, inode, device, hashed at, sha256] for the file as it
    is now, hashed well after it last changed."""
    return (isinstance(known, list) and len(known) == 7 and known[:5] == stamp
            and isinstance(known[5], int) and stamp[2] < known[5] - RACY_NS)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load(path: Path) -> dict[str, list]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):  # none yet, or torn by a crash: hash again
        return {}


def _save(path: Path, cache: dict[str, list]) -> None:
    """Replace the cache file whole; a writer racing another loses an entry, never tears one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(cache), encoding="utf-8")
    except OSError:  # a read-only cache folder costs a hash at the next start, nothing else
        pass


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write; renamed over ``path`` once durable."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:  # the rename itself must survive a crash, or a reader may find the old state
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        temporary.unlink(missing_ok=True)
