"""The message contract between producer and workers: the chunk message and the result row."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.core.errors import MessageError, Reason
from worker.core.redact import stored_uri

TASK_NAME = "tagger.tag_chunk"
RELABEL_TASK = "tagger.relabel_range"
MAX_URI_CHARS = 16_384  # presigned URLs run to a few KB; a listing skips longer ones
MAX_CHUNK_ITEMS = 10_000
_ID = re.compile(r"[0-9A-Za-z_.:-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INT8 = range(-(2**63), 2**63)
KEPT_RUNTIME = "kept float16 embedding"  # results.runtime of labels scored without the image tower
_MAX_TEXT = 1024  # keys, versions and model names


def uri_hash(uri: str) -> str:
    """The indexed identity of a URI: a hash (btree entries have a size limit, URIs do not) of
    its stored form, so that a URL signed again, or with other credentials, is one image."""
    return hashlib.sha256(stored_uri(uri).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Item:
    """One image to tag: where it is, the catalogue's own key, and its source version.

    ``sha256``: its content at this version, when the producer found a kept embedding of it
    (another label set's result at the same version): the worker scores it from that embedding
    and fetches the image only if the embedding is gone.
    """

    uri: str
    key: str | None = None
    version: str | None = None
    sha256: str | None = None

    def encode(self) -> dict[str, str]:
        return {k: v for k, v in (("uri", self.uri), ("key", self.key),
                                  ("version", self.version), ("sha256", self.sha256))
                if v is not None}

    @classmethod
    def decode(cls, data: Any) -> Item:
        if not isinstance(data, Mapping) or not isinstance(data.get("uri"), str):
            raise MessageError(f"an item must be an object with a 'uri' string, not {data!r:.80}")
        sha256 = data.get("sha256")
        if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
            raise MessageError(f"'sha256' must be 64 lowercase hex digits, not {sha256!r:.80}")
        return cls(uri=data["uri"], key=_text(data, "key"),
                   version=_text(data, "version"), sha256=sha256)


@dataclass(frozen=True)
class Chunk:
    """One message: images to tag for one model, label set and run."""

    items: tuple[Item, ...]
    model: str
    labelset_id: str
    run_id: str | None = None
    enqueued_at: float = field(default_factory=time.time)

    def encode(self) -> dict[str, Any]:
        """The task's keyword arguments (JSON): only URIs and ids travel, never credentials."""
        return {"items": [i.encode() for i in self.items], "model": self.model,
                "labelset_id": self.labelset_id, "run_id": self.run_id,
                "enqueued_at": self.enqueued_at}

    @classmethod
    def decode(cls, data: Mapping[str, Any]) -> Chunk:
        """Validate a received message; MessageError says what is wrong with it."""
        items = data.get("items")
        if not isinstance(items, list) or not 0 < len(items) <= MAX_CHUNK_ITEMS:
            raise MessageError(f"'items' must be a list of 1 to {MAX_CHUNK_ITEMS} images")
        model = _text(data, "model")
        if not model:
            raise MessageError("the message names no model")
        labelset_id, run_id = data.get("labelset_id"), data.get("run_id")
        if not isinstance(labelset_id, str) or not _ID.fullmatch(labelset_id):
            raise MessageError(f"bad labelset_id {labelset_id!r:.80}")
        if run_id is not None and not (isinstance(run_id, str) and _ID.fullmatch(run_id)):
            raise MessageError(f"bad run_id {run_id!r:.80}")
        enqueued_at = data.get("enqueued_at")
        return cls(items=tuple(Item.decode(i) for i in items), model=model,
                   labelset_id=labelset_id, run_id=run_id,
                   enqueued_at=float(enqueued_at) if isinstance(enqueued_at, int | float)
                   else time.time())

    def describe(self) -> str:
        """What Celery shows for the arguments instead of every URI (kwargsrepr)."""
        return (f"<{len(self.items)} images, model {self.model}, label set {self.labelset_id}, "
                f"run {self.run_id}>")


@dataclass(frozen=True)
class Span:
    """One relabel message: score the images whose kept embeddings have keys in [lo, hi]
    (worker/core/embedding.py) with a label set, for a run; ``scope_run``: only that run's
    images."""

    model: str
    labelset_id: str
    run_id: str
    lo: int
    hi: int
    scope_run: str | None = None

    def encode(self) -> dict[str, Any]:
        return {"model": self.model, "labelset_id": self.labelset_id, "run_id": self.run_id,
                "lo": self.lo, "hi": self.hi, "scope_run": self.scope_run}

    @classmethod
    def decode(cls, data: Mapping[str, Any]) -> Span:
        model = _text(data, "model")
        if not model:
            raise MessageError("the message names no model")
        for name in ("labelset_id", "run_id"):
            if not isinstance(data.get(name), str) or not _ID.fullmatch(data[name]):
                raise MessageError(f"bad {name} {data.get(name)!r:.80}")
        scope_run, lo, hi = data.get("scope_run"), data.get("lo"), data.get("hi")
        if scope_run is not None and not (isinstance(scope_run, str) and _ID.fullmatch(scope_run)):
            raise MessageError(f"bad scope_run {scope_run!r:.80}")
        if not (type(lo) is int and type(hi) is int and lo in _INT8 and hi in _INT8 and lo <= hi):
            raise MessageError(f"'lo' and 'hi' must be 64-bit integers, lo <= hi: {lo!r:.30}, "
                               f"{hi!r:.30}")
        return cls(model=model, labelset_id=data["labelset_id"], run_id=data["run_id"], lo=lo,
                   hi=hi, scope_run=scope_run)

    def describe(self) -> str:
        return (f"<kept embeddings {self.lo}..{self.hi}, model {self.model}, label set "
                f"{self.labelset_id}, run {self.run_id}>")


def _text(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise MessageError(f"'{name}' must be a string of at most {_MAX_TEXT} characters")
    return value


@dataclass
class Result:
    """One image's outcome: labels with scores, or a reason and an error."""

    item: Item
    model: str
    labelset_id: str
    run_id: str | None = None
    labels: list[dict[str, Any]] = field(default_factory=list)
    reason: Reason | None = None
    error: str | None = None
    content_sha256: str | None = None
    attempts: int = 1
    runtime: str | None = None
    # The digest of the weights that computed it (worker/backends/weights.py): what identifies
    # the model. Tests with no checkpoint leave it out, and their model name stands for it.
    weights: str | None = None
    # The normalised image embedding (float32, (D,)) the labels came from, when the image
    # tower computed it here: the database sink keeps it (TAGGER_KEEP_EMBEDDINGS).
    embedding: Any = field(default=None, compare=False, repr=False)

    @property
    def status(self) -> str:
        return "failed" if self.reason else "done"

    @property
    def identity(self) -> str:
        """What keys the model in the database: its weights."""
        return self.weights or self.model

    @property
    def fetched(self) -> bool:
        """Its content hash was computed here from its bytes (not taken from a kept embedding)."""
        return self.content_sha256 is not None and self.runtime != KEPT_RUNTIME

    def row(self) -> dict[str, Any]:
        """The ``results`` table row: the URI without its secrets, and whether it had any."""
        top = self.labels[0] if self.labels else {}
        stored = stored_uri(self.item.uri)
        return {"uri": storable(stored), "uri_hash": uri_hash(self.item.uri),
                "signed": stored != self.item.uri,
                "model": self.model, "labelset_id": self.labelset_id,
                "item_key": storable(self.item.key), "source_version": storable(self.item.version),
                "content_sha256": self.content_sha256, "status": self.status,
                "reason": self.reason.value if self.reason else None,
                "error": storable(self.error), "labels": self.labels, "top_label": top.get("label"),
                "top_score": top.get("score"), "attempts": self.attempts, "run_id": self.run_id,
                "runtime": self.runtime}


def storable(text: str | None) -> str | None:
    """Text PostgreSQL can store: a NUL (from a hostile message) is written as \\x00, a lone
    surrogate (a file name that is not UTF-8, a hostile message) as \\udcff."""
    if not text:
        return text
    if "\0" in text:
        text = text.replace("\0", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def label_scores(labels: Sequence[str], parents: Sequence[str | None], indices: Sequence[int],
                 scores: Sequence[float]) -> list[dict[str, Any]]:
    """The stored form of one image's top-k: highest score first, parents where there are any."""
    out = []
    for index, score in zip(indices, scores, strict=True):
        entry: dict[str, Any] = {"label": labels[index], "score": round(float(score), 6)}
        if parents[index]:
            entry["parent"] = parents[index]
        out.append(entry)
    return out
