"""Logging: one JSON object per line when not on a terminal, with the task's context bound."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context",
                                                                          default={})  # noqa: B039
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class ContextFilter(logging.Filter):
    """Copy the bound context (task id, run id, chunk size) onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            setattr(record, key, value)
        return True


@contextlib.contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind ``values`` to every log line emitted inside the block (this thread and task)."""
    token = _context.set({**_context.get(), **values})
    try:
        yield
    finally:
        _context.reset(token)


def configure(level: str | int = "INFO", json_lines: bool | None = None) -> None:
    """Send logs to stderr: JSON lines unless stderr is a terminal."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "processName": "process"}))
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings as log records, so every line stays JSON
    for noisy in ("botocore", "urllib3", "PIL", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
