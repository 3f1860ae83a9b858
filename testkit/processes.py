"""Worker processes as deployed (``celery -A worker worker``), their children and memory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from producer.local_worker import LocalWorker

# What every test and benchmark worker shares: no hub, unbuffered, no progress bars.
QUIET = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


class Worker(LocalWorker):
    """A real worker with waits on its log, its pool children, and its memory.

    ``threads``: the model's threads (OMP_NUM_THREADS); tests keep to one, so that several
    workers and the test itself share two cores; benchmarks pass None (all of them).
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, threads: int | None = 1,
                 **options: object) -> None:
        omp = {"OMP_NUM_THREADS": str(threads)} if threads else {}
        super().__init__(log_path, env={**os.environ, **QUIET, **omp, **env},
                         **options)  # type: ignore[arg-type]
        self.rss_samples: list[float] = []
        self._sampling = threading.Event()

    def start(self, ready_timeout: float = 120) -> Worker:
        self.launch()
        self.wait_ready(ready_timeout)
        return self

    def launch(self) -> Worker:
        """Start the process and return at once (for a worker that is expected to fail)."""
        super().start()
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

    def stop(self, timeout: float = 30, warm: bool = True) -> None:
        self._sampling.set()
        super().stop(timeout, warm)

    def kill(self) -> None:
        """The whole process group, at once: for a test's end, where a graceful stop (Celery's
        and billiard's take 3-4 s) proves nothing."""
        self._sampling.set()
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)


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


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: children, their children, and so on."""
    found = children(pid)
    for child in list(found):
        found += descendants(child)
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


def with_environment(name: str, value: str) -> list[int]:
    """Live processes whose environment holds ``name=value``: what a command left running."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


class Command:
    """A command run as a user runs it: its output read as it comes, its descendants noted."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        import psutil

        self.proc = subprocess.Popen(list(args), env=dict(env), cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        self.descendants: set[int] = set()
        self._psutil = psutil
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out),
                                               (self.proc.stderr, self.err))]
        for thread in [*self._readers, threading.Thread(target=self._watch, daemon=True)]:
            thread.start()

    @staticmethod
    def _read(stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line)

    def _watch(self) -> None:
        with contextlib.suppress(self._psutil.Error):
            parent = self._psutil.Process(self.proc.pid)
            while self.proc.poll() is None:
                with contextlib.suppress(self._psutil.Error):
                    self.descendants.update(p.pid for p in parent.children(recursive=True))
                time.sleep(0.05)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for_stderr(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} on stderr (exit {self.proc.poll()}):\n"
                                   f"{self.stderr}{self.stdout}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:  # until they have read the last lines
            reader.join(5)
        return code

    def __enter__(self) -> Command:
        return self

    def __exit__(self, *_: object) -> None:
        """Whatever a test left: Ctrl-C to the command (it stops its worker), then kill all."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in self.left_running():
            kill(pid)

    def left_running(self) -> list[int]:
        """Descendants seen while it ran that still live (zombies count as gone)."""
        alive = []
        for pid in self.descendants:
            with contextlib.suppress(self._psutil.Error):
                if self._psutil.Process(pid).status() != self._psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        return alive
