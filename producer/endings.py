"""How a command ends: a mistake as one line (exit code 1), nothing to tag (3), Ctrl-C (130),
SIGTERM as Ctrl-C (143: every cleanup runs, runs withdrawn and workers stopped)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click
import kombu.exceptions
import sqlalchemy as sa

from producer.tag import NothingToTag
from worker.core.errors import ConfigError, SourceError
from worker.core.redact import redact
from worker.core.settings import load_settings

EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like KeyboardInterrupt."""


@contextlib.contextmanager
def endings() -> Iterator[None]:
    """Around a command: its troubles as one line each, and its exit code."""
    try:
        with _sigterm_unwinds():
            yield
    except NothingToTag as exc:
        click.echo(str(exc), err=True)
        raise click.exceptions.Exit(exc.exit_code) from None
    except (ConfigError, SourceError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc
    except kombu.exceptions.OperationalError as exc:
        raise click.ClickException(f"broker unreachable ({redact(load_settings().broker_url)}): "
                                   f"{exc}") from exc
    except sa.exc.OperationalError as exc:
        raise click.ClickException(
            f"database unreachable ({redact(load_settings().database_url)}): "
            f"{redact(str(exc.orig)).strip().splitlines()[0]}") from exc
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        click.echo("terminated", err=True)
        raise


def _terminate(_signum: int, _frame: Any) -> None:
    # Nothing printed here: a handler that writes could interrupt a write to the same stream.
    raise Terminated(EXIT_TERMINATED)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (in the main thread, where it can)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
