"""The ``producer`` commands: one module per command (or family), registered once, here.

A command's module parses its options and delegates; what several share is in ``common``.
No command module imports another (`.importlinter`: producer-commands-independent).
"""

from __future__ import annotations

import click

from producer.commands import (
    cancel,
    corrections,
    db,
    enqueue,
    export,
    relabel,
    report,
    retry_failed,
    runs,
    search,
    serve,
    serve_metrics,
    status,
    tag,
    wait,
)

COMMANDS: tuple[click.Command, ...] = (
    tag.tag, enqueue.enqueue, status.status, runs.runs, wait.wait, cancel.cancel,
    export.export, report.report, retry_failed.retry_failed, relabel.relabel,
    corrections.corrections, db.database, serve.serve, serve_metrics.export_backlog,
    *search.COMMANDS)
