"""Worker processes as deployed (``celery -A worker worker``), their children and memory."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from producer.local_worker import LocalWorker

# What every test and benchmark worker shares: no hub, unbuffered, one thread per library.
QUIET = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
         "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


class Worker(LocalWorker):
    """A real worker with waits on its log, its pool children, and its memory."""

    def __init__(self, env: Mapping[str, str], log_path: Path, **options: object) -> None:
        super().__init__(log_path, queue=env["TAGGER_QUEUE"],
                         env={**os.environ, **QUIET, **env}, **options)  # type: ignore[arg-type]
        self.rss_samples: list[float] = []
        self._sampling = threading.Event()

    def start(self, ready_timeout: float = 120) -> Worker:
        super().start()
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        self.wait_for(self.ready, timeout, "the worker did not get ready")

    def wait_for_log(self, text: str, timeout: float, count: int = 1) -> None:
        self.wait_for(lambda: self.log().count(text) >= count, timeout, f"no {text!r} in the log")

    def wait_for(self, predicate: object, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return
            if self.exited() is not None:
                raise RuntimeError(f"worker exited with {self.exited()}:\n{self.log()[-5000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{message} in {timeout}s:\n{self.log()[-5000:]}")

    def children(self) -> list[int]:
        assert self.proc is not None
        return children(self.proc.pid)

    def model_pid(self) -> int:
        """The process that holds the model: the prefork child, or the worker itself."""
        assert self.proc is not None
        # A prefork child runs the worker's own command line; decoder processes do not.
        kids = [pid for pid in self.children() if "celery" in _cmdline(pid)]
        return kids[0] if kids else self.proc.pid

    def rss_mib(self) -> float:
        return rss_kib(self.model_pid()) / 1024

    def sample_rss(self, every: float = 0.5) -> None:
        """Record the model process's RSS in the background until stop()."""
        def sample() -> None:
            while not self._sampling.wait(every):
                with contextlib.suppress(OSError, LookupError):
                    self.rss_samples.append(self.rss_mib())
        threading.Thread(target=sample, daemon=True).start()

    def stop(self, timeout: float = 30) -> None:
        self._sampling.set()
        super().stop(timeout)


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    return ""


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(f"no {field} for {pid}")


def rss_kib(pid: int) -> int:
    return _status(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """The peak resident memory (VmHWM) of a live process, in KiB."""
    return _status(pid, "VmHWM")


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
