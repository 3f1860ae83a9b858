"""SIGTERM ends a command the way Ctrl-C does: every cleanup runs, then exit code 143."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like KeyboardInterrupt (runs withdrawn, workers stopped)."""


def _terminate(_signum: int, _frame: Any) -> None:
    # Nothing printed here: a handler that writes could interrupt a write to the same stream.
    raise Terminated(EXIT_TERMINATED)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (in the main thread, where it can)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    except Terminated:
        sys.stderr.write("terminated\n")  # the command's last line, as "interrupted" for Ctrl-C
        raise
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
