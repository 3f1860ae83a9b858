"""An index's snapshot on disk: the main faiss file and the delta, each named by a generation,
and the pointer ``<name>.json`` that names the current pair, replaced atomically.

Adding writes a new delta (a few MB) and a new pointer naming the same main file; a reader
that has that main file loaded keeps it and reads only the delta. Folding writes a new main
file. Files no longer named are removed: a process that has one open or mapped keeps reading
it until it lets go.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss

from worker.search.delta import Delta

if TYPE_CHECKING:
    from worker.search.index import Index


def _synced(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def save(index: Index, folder: Path, name: str, main: bool) -> dict[str, Any]:
    """Write the delta (and the main index where ``main`` or none is saved yet) and point at
    them; the new meta."""
    from worker.search.index import new_generation

    folder.mkdir(parents=True, exist_ok=True)
    generation = new_generation()
    meta = dict(index.meta)
    meta.pop("folded", None)
    if main or not meta.get("index") or not (folder / meta["index"]).is_file():
        meta["index"] = f"{name}-{generation}.faiss"
        faiss.write_index(index.main, str(folder / meta["index"]))
        _synced(folder / meta["index"])
    meta["delta"] = f"{name}-{generation}.delta.npz"
    index.delta.save(folder / meta["delta"])
    meta["count"] = index.count
    pointer, temporary = folder / f"{name}.json", folder / f".{name}.{generation}.json"
    temporary.write_text(json.dumps(meta), encoding="utf-8")
    _synced(temporary)
    os.replace(temporary, pointer)
    for old in folder.glob(f"{name}-*"):
        if old.name not in (meta["index"], meta["delta"]):
            old.unlink(missing_ok=True)
    return meta


def load(cls: type[Index], folder: Path, name: str, reuse: Index | None) -> Index | None:
    """The snapshot the pointer names (the main index memory-mapped where faiss can, or
    ``reuse``'s if it is the same file); None if there is none or it is damaged."""
    for _ in range(3):  # a writer may replace the generation between the reads below
        try:
            meta = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
            same = reuse is not None and reuse.meta.get("index") == meta["index"]
            main = reuse.main if same else faiss.read_index(  # type: ignore[union-attr]
                str(folder / meta["index"]), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            delta = Delta.load(folder / meta["delta"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, RuntimeError, EOFError):
            return None  # damaged: rebuilt by the keeper
        if not isinstance(main, faiss.IndexIDMap) or delta.vectors.shape[1:] != (meta["dim"],):
            return None
        loaded = cls(main, delta, meta, reuse.source if same else folder / meta["index"])
        if same:
            loaded._order = reuse._order  # type: ignore[union-attr]
        return loaded
    return None
