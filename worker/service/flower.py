"""Flower on this app (`celery -A worker flower`): never without basic auth, on loopback unless
told, however it is started."""

from __future__ import annotations

import os
import sys

import click

AUTH_FLAGS = ("--basic-auth", "--basic_auth", "--auth")  # tornado takes both spellings
AUTH_VARIABLES = ("FLOWER_BASIC_AUTH", "FLOWER_AUTH")


def guard_flower() -> None:
    """When the command loading this app is ``flower``: refuse to serve without auth, and
    listen on 127.0.0.1 unless ``--address`` (or FLOWER_ADDRESS) says otherwise.

    Celery loads the app in its command group, before Flower reads FLOWER_* variables and then
    its flags: a default set here is the weakest of the three.
    """
    context = click.get_current_context(silent=True)
    if context is None or context.invoked_subcommand != "flower":
        return
    os.environ.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    given = any(os.environ.get(name, "").strip() for name in AUTH_VARIABLES) or any(
        arg.startswith(AUTH_FLAGS) for arg in sys.argv)
    if not given:
        raise SystemExit("catalog-tagger: Flower shows and controls the workers, so it runs "
                         "behind basic auth: set FLOWER_BASIC_AUTH=user:password (or pass "
                         "--basic-auth=user:password); it listens on 127.0.0.1 unless "
                         "--address says otherwise")
