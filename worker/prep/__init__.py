"""Fetch, hash and decode outside the model's process: the messages between it and its decode
processes, which keep the model's process (and its GIL) free for the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.core.errors import ItemError
from worker.core.pixels import Preprocess
from worker.core.settings import Settings
from worker.decoders import Limits

Outcome = Any  # what the decoder's ``prepare`` made, Checked, an ItemError or a TransientError


@dataclass(frozen=True)
class Setup:
    """A decode process's first message: everything it needs, once."""

    settings: Settings
    decoder: str
    spec: Preprocess
    limits: Limits
    registries: dict[str, dict[str, Any]]  # seam -> entries, so registered parts exist there
    slot: int
    take_turns: bool


@dataclass(frozen=True, slots=True)
class Check:
    """A URI whose content is known already (its kept embedding scores it): it goes through
    every check a fetch of it would (scheme, file roots, addresses), and is not fetched."""

    uri: str


@dataclass(frozen=True, slots=True)
class Checked:
    """A Check's answer when the URI passed: it may be read from here."""


@dataclass(frozen=True)
class Group:
    """A few items for one decode process: (index, URI to fetch, URI to check, or bytes to
    decode)."""

    job: int
    items: list[tuple[int, str | bytes | Check]]
    roots: tuple[Path, ...] = ()
    # Outcomes already known by content (a copy killed its process): answered, not decoded.
    known: dict[str, ItemError] = field(default_factory=dict)
    decoder: str | None = None  # another decoder than the process's (Pillow, for a fallback)


@dataclass(frozen=True, slots=True)
class Prepared:
    """One item's answer: its content hash (once fetched) and its outcome."""

    index: int
    sha256: str | None
    outcome: Outcome
