"""The learn button's work, in a thread of the server: one at a time, its lines kept to show."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.core.errors import TaggerError

log = logging.getLogger(__name__)
LINES = 50  # kept per job


@dataclass
class Job:
    """What learning a label set is doing or did."""

    labelset_id: str
    reviewer: str
    state: str = "running"  # running, done, failed
    lines: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None

    def say(self, line: str) -> None:
        self.lines = [*self.lines[-LINES + 1:], line]


class Jobs:
    """The latest job per label set; a second start while one runs is refused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latest: dict[str, Job] = {}

    def running(self) -> Job | None:
        with self._lock:
            return next((j for j in self.latest.values() if j.state == "running"), None)

    def start(self, labelset_id: str, reviewer: str,
              work: Callable[[Callable[[str], None]], dict[str, Any]]) -> Job | None:
        """Run ``work(say)`` in a thread; None if a job is already running."""
        with self._lock:
            if any(j.state == "running" for j in self.latest.values()):
                return None
            job = self.latest[labelset_id] = Job(labelset_id, reviewer)
        threading.Thread(target=self._run, args=(job, work), name="learn", daemon=True).start()
        return job

    @staticmethod
    def _run(job: Job, work: Callable[[Callable[[str], None]], dict[str, Any]]) -> None:
        try:
            job.result = work(job.say)
            job.state = "done"
        except TaggerError as exc:  # a missing piece, said in one line
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # the server goes on; the page says what happened
            log.exception("learning label set %s failed", job.labelset_id)
            job.error, job.state = f"{type(exc).__name__}: {exc}", "failed"
