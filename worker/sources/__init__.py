"""Where images come from: one module per URI scheme, each listing and fetching, found here.

A new source (say ``gs://``) is one module with a ``Source`` subclass and one line in
``SOURCES``; ``producer enqueue gs://bucket/prefix`` and the workers' fetches then find it. The
line may carry the source's own settings (``TAGGER_GCS_*``, as ``settings.part("gcs")``) and
listing options (offered by ``producer enqueue`` and ``tag``): a ``SourcePart``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from worker.core.contract import MAX_URI_CHARS, Item
from worker.core.errors import ConfigError, ItemError, Reason, Skip, SourceError, TransientError
from worker.core.parse import Integer
from worker.core.redact import redact
from worker.core.registry import Flag, Part, Registry, Setting, seam
from worker.core.settings import Settings


@dataclass(frozen=True)
class SourcePart(Part):
    """A source's registration, with the listing options its ``listing`` takes."""

    listing: tuple[Flag, ...] = ()


@dataclass(frozen=True)
class Skipped:
    """A listed entry that is not enqueued, and why (counted on the run)."""

    reason: Skip
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Linked(Item):
    """A listed link (by its own name) to a file outside the listed folder: ``target``, which
    the run may then read. The message carries only the Item."""

    target: str = ""


Listed = Item | Skipped


@dataclass(frozen=True)
class Budget:
    """What one fetch may spend: a wall-clock deadline, and the folders files may come from."""

    deadline: float
    file_roots: tuple[Path, ...] = field(default=())

    def left(self, uri: str) -> float:
        """Seconds left; TransientError once the deadline has passed."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TransientError(f"fetching {redact(uri)} ran over its time limit")
        return remaining


class Source:
    """Lists a location into Items and fetches the bytes of one URI of its scheme.

    Subclasses override what their scheme can do; the defaults refuse with a clear reason.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def locate(self, location: str) -> tuple[str, list[str]]:
        """The location as it is to be listed, and the folders a run of it may read files from
        (a folder listing reads its own folder; nothing else opens local files)."""
        return location, []

    def listing(self, location: str, **options: Any) -> Iterator[Listed]:
        """Every entry at ``location``, streaming; SourceError if it cannot be listed at all."""
        raise SourceError(f"{scheme(location)}:// locations cannot be listed")

    def describe(self, location: str, **options: Any) -> str:
        """What a run of this listing records as its source."""
        return redact(location)

    def check(self, uri: str, budget: Budget) -> None:
        """ItemError unless ``uri`` may be read from here (file roots, addresses, names): what
        ``fetch`` checks before it reads, made alone for an image whose content is known. A
        source that fetches and checks nothing first lets every URI pass."""
        if type(self).fetch is Source.fetch:
            raise ItemError(Reason.BAD_URI, f"{scheme(uri)}:// URIs cannot be fetched")

    def fetch(self, uri: str, budget: Budget) -> bytes:
        """The bytes at ``uri`` (``check`` first); ItemError when they will never come,
        TransientError if later."""
        self.check(uri, budget)
        raise ItemError(Reason.BAD_URI, f"{scheme(uri)}:// URIs cannot be fetched")


_CATALOGUE = SourcePart(
    "worker.sources.sql:SqlSource", prefix="catalogue",
    settings=(Setting("timeout", Integer(1), 600, "Seconds each step of a listing may run."),),
    listing=(Flag("query", "One SELECT returning (key, image_url[, version]) rows."),
             Flag("table", "Catalogue table (instead of --query)."),
             Flag("key_column", "Its key column (with --table).", "id"),
             Flag("url_column", "Its image URL column (with --table).", "image_url"),
             Flag("version_column", "Column that changes when the image changes.")))

# URI scheme -> its source; a path without a scheme is a local file.
SOURCES: Registry[type[Source]] = Registry("source", {
    "": "worker.sources.local:LocalSource", "file": "worker.sources.local:LocalSource",
    "s3": "worker.sources.s3:S3Source",
    "http": "worker.sources.http:HttpSource", "https": "worker.sources.http:HttpSource",
    "postgresql": _CATALOGUE, "postgres": _CATALOGUE, "sqlite": _CATALOGUE,
}, kind=SourcePart)


def scheme(uri: str) -> str:
    head, sep, _ = uri.partition("://")
    if sep:
        return head.lower().partition("+")[0]
    return "file" if uri.startswith("file:") else ""


def source_for(uri: str, settings: Settings) -> Source:
    """The source that serves ``uri``'s scheme (ConfigError for an unknown one)."""
    name = scheme(uri)
    if name not in SOURCES:
        raise ConfigError(f"no source for {name}:// URIs (known: "
                          f"{', '.join(f'{s}://' for s in SOURCES if s)})")
    return _cached(SOURCES.get(name), settings)


@functools.cache
def _cached(cls: type[Source], settings: Settings) -> Source:
    return cls(settings)


def uri_problem(uri: str) -> Skipped | None:
    """Why this URI cannot be fetched whatever its source says, or None."""
    if "\0" in uri or any(ord(c) < 32 for c in uri):
        return Skipped(Skip.BAD_URI, "control character in the URI")
    if len(uri) > MAX_URI_CHARS:
        return Skipped(Skip.URI_TOO_LONG, f"{len(uri)} characters, over {MAX_URI_CHARS}")
    if scheme(uri) not in SOURCES:
        return Skipped(Skip.BAD_URI, f"no source for {scheme(uri)}:// URIs")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return Skipped(Skip.BAD_URI, str(exc))
    return None


def check_uri(uri: str) -> None:
    """ItemError(bad-uri) for a URI no source can serve (the worker's side of uri_problem)."""
    problem = uri_problem(uri)
    if problem:
        raise ItemError(Reason.BAD_URI, f"bad URI: {problem.detail}")


def is_image_name(name: str) -> bool:
    """Whether a listed name is an image: a suffix some registered decoder reads."""
    return name.lower().endswith(seam("decoder").declared("suffixes"))


def listing_flags() -> dict[str, tuple[Flag, list[str]]]:
    """Every registered source's listing options, by name, with the schemes that take each."""
    flags: dict[str, tuple[Flag, list[str]]] = {}
    for name, part in SOURCES.parts().items():
        for flag in getattr(part, "listing", ()):
            flags.setdefault(flag.name, (flag, []))[1].append(f"{name or 'file'}://")
    return flags


def check_options(location: str, options: dict[str, Any]) -> None:
    """ConfigError for a listing option ``location``'s source does not take."""
    taken = {flag.name for flag in getattr(SOURCES.part(scheme(location)), "listing", ())}
    for name in options:
        if name not in taken:
            schemes = ", ".join(listing_flags().get(name, (None, []))[1]) or "no"
            raise ConfigError(f"--{name.replace('_', '-')} is for {schemes} locations, not "
                              f"{redact(location)}")


def read_capped(read: Any, uri: str, max_bytes: int, budget: Budget, declared: int = 0
                ) -> bytes:
    """Read a stream in pieces: the byte cap and the deadline are checked between reads.
    ``declared``: the size the source announced, refused before anything is read."""
    if declared > max_bytes:
        raise ItemError(Reason.TOO_LARGE, f"{uri} is {declared} bytes, over the cap of "
                        f"{max_bytes}")
    chunks, total = [], 0
    while True:
        budget.left(uri)
        chunk = read(256 * 1024)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise ItemError(Reason.TOO_LARGE, f"image is over the cap of {max_bytes} bytes")
        chunks.append(chunk)
