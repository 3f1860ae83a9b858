"""``producer search`` and ``producer similar``: ranked images as a table or as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from worker.core.settings import Settings
from worker.db import migrate
from worker.search import Hit

if TYPE_CHECKING:
    from worker.search import Finder


def finder(settings: Settings, note: Callable[[str], None]) -> Finder:
    """A Finder on the results database at the current schema (the embedded one upgrades)."""
    from worker.search import Finder  # NumPy and faiss: loaded by the commands that search

    migrate.ensure_current(settings.database_url, settings.default_database)
    return Finder(settings, note)


def shown(hits: list[Hit], as_json: bool) -> str:
    """One line per image: rank, score, top label, URI; or a JSON list of hits."""
    if as_json:
        return json.dumps([asdict(hit) for hit in hits], ensure_ascii=False)
    if not hits:
        return "no images found"
    width = max(len(hit.top_label or "-") for hit in hits)
    return "\n".join(f"{rank:>4}  {hit.score:.4f}  {(hit.top_label or '-'):<{width}}  {hit.uri}"
                     for rank, hit in enumerate(hits, 1))
