"""The decode processes of one model process: start them, hand them groups, survive their deaths.

Each slot is a thread here and a process (worker/prep/child.py) there. The thread sends a group
of items and reads one answer per item; the model's process spends a message's worth of CPU
per image, while fetching, hashing and decoding happen elsewhere. A process that dies (its
decode ran over the deadline, crashed, or stopped answering) costs only the item it was on:
that item is answered with the reason, the process is replaced, and the rest of its group is
sent again, with the dead item's content hash marked so that a copy of it is not decoded again.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from worker.core.errors import ItemError, Reason
from worker.core.pixels import Preprocess
from worker.core.settings import Settings
from worker.decoders import DECODERS, Limits
from worker.prep import Group, Prepared, Setup
from worker.prep.record import Record
from worker.prep.turns import Turns
from worker.sources import SOURCES

log = logging.getLogger(__name__)
Item = tuple[int, str | bytes]  # index in the job, and a URI to fetch or bytes to decode
_jobs = itertools.count(1)


@dataclass
class Job:
    """One call of ``prepare``: its answers arrive on a queue, in any order."""

    id: int = field(default_factory=lambda: next(_jobs))
    answers: queue.SimpleQueue[Prepared] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False  # its caller stopped waiting: its groups are dropped


class Process:
    """One decode process and the ends of its pipe and records, as its slot holds them."""

    def __init__(self, setup: Setup, turns_fd: int) -> None:
        self.record = Record()
        ours, theirs = socket.socketpair()
        fds = (theirs.fileno(), self.record.fd, turns_fd)
        # PYTHONPATH would not reach a test's modules; the parent's sys.path is sent instead.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.prep.child", str(fds[0]), str(os.getpid()),
             str(fds[1]), str(fds[2])], pass_fds=fds, stdin=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"})
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send(sys.path)
        self.conn.send(setup)
        self.killed = False

    def kill(self) -> None:
        self.killed = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def close(self) -> None:
        self.conn.close()
        self.record.close()


class PrepPool:
    """``processes`` decode processes; ``prepare`` streams each item's answer as it comes."""

    def __init__(self, setup_of: Any, processes: int, take_turns: bool, patience: float) -> None:
        """``setup_of(slot)``: the Setup for slot N; ``patience``: seconds without an answer
        after which a process is taken for stuck and killed (beyond the item's own limits)."""
        self.turns = Turns(take_turns, processes)
        self.patience = patience
        self.closing = False
        self.work: queue.Queue[tuple[Job, Group] | None] = queue.Queue()
        self.slots = [Slot(self, setup_of(n)) for n in range(processes)]

    def prepare(self, items: Sequence[Item], roots: tuple[Path, ...] = (),
                group_size: int | None = None, decoder: str | None = None,
                deadline: float | None = None) -> Iterator[Prepared]:
        """Every item's answer, as soon as it is ready (not in order). ``decoder``: another
        decoder than the processes' own, a name or a ``module:function`` with the signature
        of ``Decoder.prepare``; ``deadline`` (monotonic): stop there, the rest unanswered."""
        job = Job()
        size = group_size or max(1, min(8, -(-len(items) // (2 * len(self.slots)))))
        for start in range(0, len(items), size):
            group = Group(job.id, list(items[start:start + size]), roots, decoder=decoder)
            self.work.put((job, group))
        try:
            for _ in range(len(items)):
                left = None if deadline is None else deadline - time.monotonic()
                yield job.answers.get(timeout=left if left is None else max(0.0, left))
        except queue.Empty:
            pass
        finally:  # answered, out of time, or the caller stopped reading
            job.cancelled = True

    def close(self) -> None:
        """Stop every process now (a decode in progress is not waited for)."""
        self.closing = True
        for slot in self.slots:
            self.work.put(None)
            if slot.process is not None:
                slot.process.kill()
        for slot in self.slots:
            slot.thread.join(30)
            slot.stop()
        self.turns.close()


class Slot:
    """A thread of the pool that owns one decode process, replacing it when it dies."""

    def __init__(self, pool: PrepPool, setup: Setup) -> None:
        self.pool = pool
        self.setup = setup
        self.process: Process | None = None
        self.thread = threading.Thread(target=self.run, name=f"prep-{setup.slot}", daemon=True)
        self.thread.start()

    def run(self) -> None:
        # Processes start here, in this long-lived thread: the kernel's parent-death signal
        # follows the thread that started a process.
        self.ensure()
        while (work := self.pool.work.get()) is not None:
            job, group = work
            if job.cancelled or self.pool.closing:
                continue
            try:
                self.serve(job, group)
            except Exception as exc:  # never lose the answers a chunk is waiting for
                log.exception("decode slot %d failed", self.setup.slot)
                self.stop()
                for index, _ in group.items:
                    job.answers.put(Prepared(index, None, ItemError(
                        Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")))

    def ensure(self) -> Process:
        if self.process is not None and self.process.proc.poll() is not None:
            self.stop()  # it left (a recycle) or died between groups
        if self.process is None:
            self.process = Process(self.setup, self.pool.turns.fd)
        return self.process

    def serve(self, job: Job, group: Group) -> None:
        pending, known = list(group.items), dict(group.known)
        while pending and not (job.cancelled or self.pool.closing):
            process = self.ensure()
            try:
                process.conn.send(Group(job.id, pending, group.roots, known, group.decoder))
            except OSError:  # it left after its last group: a fresh one takes this one
                self.stop()
                continue
            while pending:
                answer = self.receive(process)
                if answer is None:  # it died on the first unanswered item
                    index, _ = pending.pop(0)
                    sha, error = self.blame(process, job.id, index)
                    job.answers.put(Prepared(index, sha, error))
                    if sha:
                        known[sha] = error
                    break
                _, index, sha, outcome = answer
                job.answers.put(Prepared(index, sha, outcome))
                pending.pop(0)

    def receive(self, process: Process) -> Any:
        """The next answer, or None if the process died or stopped answering."""
        try:
            if process.conn.poll(self.pool.patience):
                return process.conn.recv()
        except (EOFError, OSError):
            return None
        process.kill()  # stuck outside the item's own limits (a fetch that ignores them)
        return None

    def blame(self, process: Process, job: int, index: int) -> tuple[str | None, ItemError]:
        """Why the process died on item ``index``, and that item's content hash if known."""
        current = process.record.read()
        code = process.proc.wait(30)
        self.stop()
        decoding = current is not None and current[:2] == (job, index)
        sha = current[2] if current is not None and decoding else None
        if code == -signal.SIGALRM:
            error = ItemError(Reason.TIMEOUT, f"decoding took over "
                              f"{self.setup.limits.seconds:.0f}s (TAGGER_ITEM_TIMEOUT); its "
                              "process was stopped")
        elif process.killed:
            error = ItemError(Reason.TIMEOUT, f"no answer in {self.pool.patience:.0f}s; its "
                              "process was stopped")
        else:
            error = ItemError(Reason.DECODER_CRASHED, f"the decode process died (exit code "
                              f"{code}) while {'decoding' if decoding else 'fetching'}")
        if not self.pool.closing:
            log.warning("decode process %d stopped on an item: %s", process.proc.pid, error)
        return sha, error

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.proc.wait(30)
            self.process.close()
            self.process = None
            self.pool.turns.forget(self.setup.slot)


def prep_pool(settings: Settings, decoder: str, spec: Preprocess, take_turns: bool,
              limits: Limits | None = None, model_processes: int = 1) -> PrepPool:
    """The decode processes of one of ``model_processes`` (TAGGER_DECODE_PROCESSES): they
    fetch, hash and decode with ``decoder``."""
    limits = limits or Limits.from_settings(settings)
    # Parts registered in this process (a plugin, a test) are registered there too.
    registries = {"sources": SOURCES.entries(), "decoders": DECODERS.entries()}

    def setup(slot: int) -> Setup:
        return Setup(settings, decoder, spec, limits, registries, slot, take_turns)

    # Past the item's own limits (fetch, then decode): a process this quiet is stuck.
    patience = 2 * settings.item_timeout + settings.fetch_timeout + 10
    return PrepPool(setup, settings.decode_processes_per(model_processes), take_turns, patience)
