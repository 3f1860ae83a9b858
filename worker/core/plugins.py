"""Where parts come from: the built-in seams, installed plugins, and TAGGER_PLUGINS.

Every module here is imported before settings are read, so that what it registers is checked
and configured like a built-in part (simonw/llm loads its own models the same way):

- the built-in seam packages (their registries, with the built-in parts' declarations);
- the ``catalog_tagger.parts`` entry points of installed distributions (``[project.entry-points.
  "catalog_tagger.parts"] kafka = "mypackage.tagger_parts"``): the convention for a package;
- ``TAGGER_PLUGINS=module,module``: modules on the Python path, not installed (tests, a local
  part). The worker, its decode processes and the producer all read it, so set it for each.

A plugin module registers its parts at import (``SINKS.register("kafka", Part(...))``) and
stays light: its parts' classes are ``"module:Class"`` strings, imported where they are used.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points

from worker.core.errors import ConfigError
from worker.core.registry import SEAMS

BUILTIN = tuple(where.partition(":")[0] for where in SEAMS.values())
GROUP = "catalog_tagger.parts"


def load(variable: str, raw: str) -> tuple[str, ...]:
    """Import the built-in seams, installed plugins and the modules ``raw`` names (once each);
    the names, or a one-line ConfigError for one that does not import."""
    _builtins_and_installed()
    named = tuple(dict.fromkeys(m.strip() for m in raw.split(",") if m.strip()))
    for module in named:
        _import(variable, module)
    return named


@functools.cache
def _builtins_and_installed() -> None:
    for module in BUILTIN:
        importlib.import_module(module)
    for entry in entry_points(group=GROUP):
        _import(f"entry point {entry.name!r} ({GROUP})", entry.value.partition(":")[0])


def _import(variable: str, module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{variable}: cannot import {module!r} ({exc})") from None
