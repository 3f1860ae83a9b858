"""A Celery worker process that a command starts, watches and always stops again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

# The worker stops when this process is gone (worker/service/owner.py).
OWNER_VARIABLE = "TAGGER_OWNER_PID"
GONE_WAIT = 10.0  # seconds to wait for the killed group's last processes to exit


class LocalWorker:
    """``celery -A worker worker`` in its own process group, logging JSON lines to a file.

    It consumes its model's queue (worker/core/celeryconf.py), and stops by itself when the
    process that started it is gone, even if that one was killed with SIGKILL.
    """

    def __init__(self, log_path: Path, env: Mapping[str, str] | None = None,
                 pool: str = "prefork", concurrency: int = 1, name: str = "local",
                 extra: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self.command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", pool,
                        "-c", str(concurrency), "--loglevel", "INFO", "--logfile", str(log_path),
                        "-n", f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h",
                        "--without-gossip", "--without-mingle", *extra]
        self.env = {**(os.environ if env is None else env), OWNER_VARIABLE: str(os.getpid())}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalWorker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:  # what happens before logging is set up
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict[str, object]]:
        """The JSON log records written so far (other lines are left out)."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def ready(self) -> bool:
        """The model is loaded and warmed up (worker/service/startup.py logs this last)."""
        return any(r.get("name") == "worker.service.startup"
                   and str(r.get("message")).endswith("ready") for r in self.records())

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def failure(self) -> str | None:
        """Why the worker is gone, from its own last words; None while it runs."""
        code = self.exited()
        if code is None:
            return None
        worst = [str(r["message"]) for r in self.records()
                 if r.get("level") in {"CRITICAL", "ERROR"}]
        detail = worst[0] if worst else (self.log().strip().splitlines() or ["no output"])[-1]
        return f"the worker exited with code {code}: {detail} (log: {self.log_path})"

    def signal(self, sig: int, group: bool = True) -> None:
        """Signal the worker's whole process group (pool children, decoders), or its main."""
        if self.proc is not None and self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def stop(self, timeout: float = 30, warm: bool = True) -> None:
        """Warm shutdown (the chunk in hand finishes) or cold (it is dropped and comes back
        later: acks late); then whatever is left of the group is killed, and this returns only
        once every process of it has exited. A second Ctrl-C only skips the wait for the warm
        shutdown."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.signal(signal.SIGTERM if warm else signal.SIGQUIT, group=False)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
        finally:
            self._end_group()

    def _end_group(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # what the group left behind, if anything
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(GONE_WAIT)
        deadline = time.monotonic() + GONE_WAIT
        while group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> LocalWorker:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def group_alive(pgid: int) -> bool:
    """Whether a process of this group still runs (zombies, exited but not reaped, do not)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
    return False
