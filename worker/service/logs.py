"""Logging: JSON lines (off a terminal) with the task's context bound and secrets masked."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import logging.handlers
import sys
from collections.abc import Iterator
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from worker.core.redact import redact

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context",
                                                                          default={})  # noqa: B039
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s"


class ContextFilter(logging.Filter):
    """Copy the bound context (task id, run id, chunk size) onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            setattr(record, key, value)
        return True


class RedactingJson(JsonFormatter):
    """JSON lines, with URL passwords and signatures masked wherever they appear."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingPlain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_info_by_default = False  # decided in the worker's main process; pool children inherit it


def worker_level(given: str | int) -> str | int:
    """Celery's --loglevel, except that its default (WARNING) would hide the ready line and the
    line per chunk: a worker not told a level logs at INFO."""
    global _info_by_default
    import click
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.get_parameter_source("loglevel") is ParameterSource.DEFAULT:
        _info_by_default = True
    return "INFO" if _info_by_default else given


@contextlib.contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind ``values`` to every log line emitted inside the block (this thread and task)."""
    token = _context.set({**_context.get(), **values})
    try:
        yield
    finally:
        _context.reset(token)


def configure(level: str | int = "INFO", logfile: str | None = None,
              json_lines: bool | None = None) -> None:
    """Log to ``logfile`` (Celery's --logfile) or stderr: JSON lines unless on a terminal."""
    if logfile:
        handler: logging.Handler = logging.handlers.WatchedFileHandler(logfile, encoding="utf-8")
        json_lines = True if json_lines is None else json_lines
    else:
        handler = logging.StreamHandler(sys.stderr)
        json_lines = not sys.stderr.isatty() if json_lines is None else json_lines
    handler.addFilter(ContextFilter())
    handler.setFormatter(RedactingJson(JSON_FIELDS, rename_fields={
        "asctime": "time", "levelname": "level", "processName": "process"})
        if json_lines else RedactingPlain(PLAIN_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # billiard's pool logger does not propagate: without a handler its lines (a child that
    # exited) went to Python's last-resort handler, as plain text among the JSON.
    from billiard.util import get_logger

    pool = get_logger()
    pool.handlers[:] = [handler]
    pool.setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python warnings as log records, so every line stays JSON
    for noisy in ("botocore", "urllib3", "PIL", "transformers", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
