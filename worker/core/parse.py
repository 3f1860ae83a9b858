"""Setting parsers: (variable name, raw text) -> value, or a one-line ConfigError naming it.

Core settings and every part's own settings (``Setting`` in worker/core/registry.py) use these,
so a mistake reads the same whichever part declared the variable.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.core.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Parser = Callable[[str, str], object]


@dataclass(frozen=True)
class Integer:
    """An integer of at least ``minimum`` (a class, not a closure: parts' declarations travel
    to decode processes pickled)."""

    minimum: int = 0

    def __call__(self, name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if value < self.minimum:
            raise ConfigError(f"{name} must be >= {self.minimum}, got {value}")
        return value


def boolean(name: str, raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


class Choice:
    """One of ``choices`` (any case), or a value starting with one of ``prefixes`` (cuda:N)."""

    def __init__(self, *choices: str, prefixes: tuple[str, ...] = ()) -> None:
        self.choices, self.prefixes = choices, prefixes

    def __call__(self, name: str, raw: str) -> str:
        value = raw.lower()
        if value not in self.choices and not value.startswith(self.prefixes):
            raise ConfigError(f"{name} must be one of {', '.join(self.choices)}, got {raw!r}")
        return value


def text(name: str, raw: str) -> str:
    return raw


class Url:
    """A URL of one of ``schemes``; only its scheme is ever shown (never a password)."""

    def __init__(self, *schemes: str) -> None:
        self.schemes = schemes

    def __call__(self, name: str, raw: str) -> str:
        head, sep, _ = raw.partition("://")
        if not sep or head.lower() not in self.schemes:
            shown = " or ".join(f"{s}://" for s in self.schemes)
            raise ConfigError(f"{name} must be a {shown} URL, got {head if sep else raw[:20]!r}")
        return raw


def networks(name: str, raw: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(p.strip()) for p in raw.split(",") if p.strip())
    except ValueError as exc:
        raise ConfigError(f"{name} must be a comma-separated list of CIDR networks: {exc}"
                          ) from None


def paths(name: str, raw: str) -> tuple[Path, ...]:
    found = tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip())
    for path in found:
        if not path.is_absolute():
            raise ConfigError(f"{name} takes absolute folders separated by '{os.pathsep}', "
                              f"got {str(path)!r}")
    return tuple(Path(os.path.realpath(p)) for p in found)
