"""Commands of this installation as a user can type them from where they are."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def _typed(path: Path) -> str:
    """The bare name where the shell finds this very file (an active virtualenv, an image), else
    the absolute path (``.venv/bin/producer`` while the virtualenv is not active)."""
    found = shutil.which(path.name)
    # Not samefile: a virtualenv's python is a link to a system one that lacks our packages.
    if found and os.path.abspath(found) == os.path.abspath(path):
        return path.name
    return shlex.quote(str(path))


def command(name: str) -> str:
    """One of this installation's console scripts (``producer``, ``hf``, ``celery``)."""
    own = Path(sys.executable).parent / name
    return _typed(own) if own.exists() else name


def python_module(module: str, *args: str) -> str:
    """``python -m module args`` with the interpreter that has this installation."""
    return " ".join([_typed(Path(sys.executable)), "-m", module, *map(shlex.quote, args)])
