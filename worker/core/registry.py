"""Named parts of one seam (sources, backends, decoders, sinks), imported on first use, and what
each declares without being imported: its own settings, listing options, formats, precisions.

Each seam's registry is the one list of its names: settings check against it and read the
settings its parts declare, the worker builds from it, and a new part is one module plus one
``register`` line (or one entry where the registry is made). Built-in parts register exactly as
plugins do (worker/core/plugins.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from worker.core.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Setting:
    """A setting a part declares: ``TAGGER_<PREFIX>_<NAME>``, read and checked when settings
    load (``parse`` raises the one-line ConfigError), then ``settings.part(prefix).<name>``."""

    name: str
    parse: Callable[[str, str], Any]
    default: Any
    help: str = ""


@dataclass(frozen=True)
class Flag:
    """A listing option a source offers ``producer enqueue`` and ``producer tag``:
    ``--key-column`` for ``key_column``, handed to its ``listing`` and ``describe``."""

    name: str
    help: str
    default: str | None = None

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Part:
    """One registration: the class (``"module:Class"``, imported when first asked for) and
    what it declares that others need before importing it. Seams add their own declarations
    (``SourcePart``, ``DecoderPart``, ``BackendPart``)."""

    target: Any  # "module:Class", or the class itself
    prefix: str = ""  # of its settings' variables (TAGGER_<PREFIX>_*); default: its name
    settings: tuple[Setting, ...] = ()

    def variable(self, name: str, setting: Setting) -> str:
        return f"TAGGER_{(self.prefix or name).upper()}_{setting.name.upper()}"


class Registry(Generic[T]):
    """``name -> Part``; a bare ``"module:Class"`` or class is a part declaring nothing."""

    def __init__(self, seam: str, entries: Mapping[str, Any] | None = None,
                 kind: type[Part] = Part) -> None:
        self.seam = seam
        self.kind = kind
        self._entries: dict[str, Part] = {}
        self._loaded: dict[str, T] = {}
        self.version = 0  # changes with every registration: what caches of declarations key on
        self._declared: dict[tuple[int, str], tuple[str, ...]] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    def register(self, name: str, target: Any) -> None:
        """``target``: a Part of this seam's kind, a ``"module:Class"``, or a class."""
        part = target if isinstance(target, Part) else self.kind(target)
        self._entries[name.lower()] = part
        self._loaded.pop(name.lower(), None)
        self.version += 1

    def entries(self) -> dict[str, Part]:
        """Every entry as registered (for another process to register the same)."""
        return dict(self._entries)

    def update(self, entries: Mapping[str, Part]) -> None:
        for name, part in entries.items():
            self.register(name, part)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self._loaded.pop(name, None)
        self.version += 1

    def part(self, name: str) -> Part:
        """What ``name`` declares, without importing it."""
        if name not in self._entries:
            raise ConfigError(f"no {self.seam} named {name!r} (known: {self.known()})")
        return self._entries[name]

    def parts(self) -> dict[str, Part]:
        return dict(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def get(self, name: str) -> T:
        """The implementation registered as ``name``; ConfigError naming the known ones."""
        if name not in self._loaded:
            target = self.part(name).target
            if isinstance(target, str):
                module, _, attribute = target.partition(":")
                target = getattr(importlib.import_module(module), attribute)
            self._loaded[name] = target
        return self._loaded[name]

    def declared(self, what: str) -> tuple[str, ...]:
        """What the parts declare under ``what`` (``suffixes``, ``formats``...), all together,
        in registration order; kept until the next registration (listings ask per name)."""
        key = (self.version, what)
        if key not in self._declared:
            found = (getattr(part, what, ()) for part in self._entries.values())
            self._declared = {**{k: v for k, v in self._declared.items()
                                 if k[0] == self.version},
                              key: tuple(dict.fromkeys(
                                  v for group in found
                                  for v in ((group,) if isinstance(group, str) else group)
                                  if v))}
        return self._declared[key]

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


def registries() -> dict[str, Registry[Any]]:
    """Every seam's registry, by seam."""
    return {name: seam(name) for name in SEAMS}
