"""Named implementations of one seam (sources, backends, decoders, sinks), imported on first use.

Each seam's registry is the one list of its names: settings check against it, the worker builds
from it, and a new implementation is one module plus one ``register`` line (or one entry where
the registry is made).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from worker.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> class``; an entry may be ``"module:Class"``, imported when first asked for."""

    def __init__(self, seam: str, entries: Mapping[str, str | T] | None = None) -> None:
        self.seam = seam
        self._entries: dict[str, str | T] = dict(entries or {})

    def register(self, name: str, target: str | T) -> None:
        self._entries[name.lower()] = target

    def entries(self) -> dict[str, str | T]:
        """Every entry as registered (for another process to register the same)."""
        return dict(self._entries)

    def update(self, entries: dict[str, str | T]) -> None:
        self._entries.update(entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def get(self, name: str) -> T:
        """The implementation registered as ``name``; ConfigError naming the known ones."""
        if name not in self._entries:
            raise ConfigError(f"no {self.seam} named {name!r} (known: {self.known()})")
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            target = getattr(importlib.import_module(module), attribute)
            self._entries[name] = target
        return target  # type: ignore[return-value]

    def known(self) -> str:
        return ", ".join(n for n in self._entries if n) or "none"

    def check(self, variable: str, raw: str, *, also: tuple[str, ...] = ()) -> str:
        """``raw`` if it names an entry (or one of ``also``), else ConfigError for ``variable``."""
        value = raw.strip().lower()
        if value in self._entries or value in also:
            return value
        choices = ", ".join([*also, *(n for n in self._entries if n)])
        raise ConfigError(f"{variable} must be one of {choices}, got {raw!r}")



# Where each seam keeps its registry. Settings check names against them; the core sits below
# the seam packages (which hand `Settings` to their parts), so it finds them by name, on first use.
SEAMS = {"backend": "worker.backends:BACKENDS", "decoder": "worker.decoders:DECODERS",
         "sink": "worker.sinks:SINKS", "source": "worker.sources:SOURCES"}
PRIMARY_SINK = "database"  # the sink every worker writes first: what is done, pending, in flight


def seam(name: str) -> Registry[Any]:
    """The registry of the seam ``name`` (a key of SEAMS)."""
    module, _, attribute = SEAMS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]
