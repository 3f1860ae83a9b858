"""Each part's own settings: declared on its registration (``Part.settings``), read from its
``TAGGER_<PART>_*`` variables with the rest, and handed to it as ``settings.part(name)``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.core.errors import ConfigError
from worker.core.registry import registries


@dataclass(frozen=True)
class Options:
    """One part's settings as read and checked: ``settings.part("kafka").topic``."""

    part: str
    values: tuple[tuple[str, Any], ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # pickle and copy ask before __init__ has run
            raise AttributeError(name)
        for key, value in self.__dict__.get("values", ()):
            if key == name:
                return value
        raise AttributeError(f"the {self.__dict__.get('part')} part declares no setting "
                             f"{name!r}")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def read_options(env: Mapping[str, str]) -> tuple[Options, ...]:
    """Every registered part's declared settings from ``env``, defaults for those not set;
    a one-line ConfigError for a bad value, or for two parts claiming one variable."""
    found: dict[str, Options] = {}
    claimed: dict[str, str] = {}
    for seam, registry in registries().items():
        for name, part in registry.parts().items():
            key = part.prefix or name
            if not part.settings or key in found:
                continue  # one part under several names (http and https) is read once
            values = []
            for setting in part.settings:
                variable = part.variable(name, setting)
                if claimed.setdefault(variable, f"{seam} {key}") != f"{seam} {key}":
                    raise ConfigError(f"{variable} is declared by both the {claimed[variable]} "
                                      f"and the {seam} {key} parts: give one a prefix of its own")
                raw = env.get(variable, "").strip()
                values.append((setting.name, setting.parse(variable, raw) if raw
                               else setting.default))
            found[key] = Options(key, tuple(values))
    return tuple(found.values())
