"""Content seen before, by any worker: labels computed for identical bytes, kept embeddings, and
what each image's own fetch found (the only thing that says which content a URI has)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Engine

from worker.core.contract import Item, uri_hash
from worker.db import embeddings as kept
from worker.db import images
from worker.db import writes as db
from worker.db.models import Model

log = logging.getLogger(__name__)
Labels = list[dict[str, Any]]


class KnownContent:
    """Labels by (label set, content SHA-256): this process's recent ones, then the database's."""

    def __init__(self, engine: Engine, model: Model, capacity: int = 20_000) -> None:
        self.engine = engine
        self.model = model  # the weights: labels and embeddings of other weights never serve
        self.capacity = capacity
        self._recent: OrderedDict[tuple[str, str], Labels] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, labelset_id: str, hashes: Iterable[str]) -> dict[str, Labels]:
        """The labels known for these hashes (one database query for those not seen here)."""
        wanted = set(hashes)
        with self._lock:
            found = {h: self._recent[(labelset_id, h)] for h in wanted
                     if (labelset_id, h) in self._recent}
        missing = wanted - found.keys()
        if missing:
            stored = db.done_by_content(self.engine, self.model.id, labelset_id, missing)
            for sha, labels in stored.items():
                self.remember(labelset_id, sha, labels)
            found.update(stored)
        return found

    def remember(self, labelset_id: str, sha256: str, labels: Labels) -> None:
        with self._lock:
            self._recent[(labelset_id, sha256)] = labels
            while len(self._recent) > self.capacity:
                self._recent.popitem(last=False)

    def embeddings(self, hashes: Iterable[str]) -> kept.Kept:
        """The kept embeddings (float16) of these contents; those not kept are absent, and
        those found corrupt are removed from the store (their images fail alone)."""
        wanted = set(hashes)
        found = kept.lookup(self.engine, self.model, wanted) if wanted else kept.Kept()
        if found.corrupt:
            log.warning("%d kept embeddings are corrupt and were removed: %s",
                        len(found.corrupt), "; ".join(f"{sha[:12]} {problem}"
                                                      for sha, problem in found.corrupt.items()))
            kept.forget(self.engine, self.model, found.corrupt)
        return found

    def fetched(self, items: Iterable[Item]) -> dict[str, str]:
        """The content each item's own latest fetch found, by URI, where that fetch was of the
        item's version: what a message's claim about an item's content is checked against."""
        wanted = {uri_hash(item.uri): item for item in items}
        found = images.read(self.engine, wanted)
        return {wanted[key].uri: content for key, (version, content) in found.items()
                if version == wanted[key].version}
