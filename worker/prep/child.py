"""A decode process: fetch each item from its source, hash it, prepare it with the decoder.

    python -m worker.prep.child FD PARENT_PID RECORD_FD TURNS_FD

Started by worker/prep/pool.py, one per slot. Each decode runs under the image's deadline (a
kernel timer whose signal ends the process, even inside C code) and memory cap (RLIMIT_AS,
raised again after the decode); the process dies with its parent (PR_SET_PDEATHSIG), and leaves
after a large image or many items so that its memory goes back to the system.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import os
import resource
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from worker.core.errors import ItemError, Reason, TransientError
from worker.core.redact import redact
from worker.prep import Check, Checked, Group, Outcome, Setup
from worker.prep.record import Record
from worker.prep.turns import Turn

if TYPE_CHECKING:
    from worker.sources import Budget, Source

PR_SET_PDEATHSIG = 1
MAX_ITEMS = 5_000  # then a fresh process: fragmentation and leaks cannot build up
RECYCLE_ABOVE = 256 * 2**20  # RSS growth that sends the memory back by leaving
RECENT = 16  # outcomes kept by content: identical bytes in a chunk are decoded once


def die_with_parent(parent: int) -> None:
    """The kernel kills this process when the thread that started it ends (or its process)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(0)


def memory() -> tuple[int, int]:
    """This process's (address space, resident set) in bytes."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        size, resident = statm.read().split()[:2]
    page = os.sysconf("SC_PAGE_SIZE")
    return int(size) * page, int(resident) * page


@contextlib.contextmanager
def bounded(seconds: float, allowed: int) -> Iterator[None]:
    """A deadline the kernel enforces (SIGALRM's default action ends the process) and a memory
    cap (allocations past it fail with MemoryError); both lifted afterwards."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = memory()[0] + allowed + 64 * 2**20  # Pillow's block cache and the bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


class Child:
    """What one decode process does with each item of each group it is given."""

    def __init__(self, setup: Setup, record: Record, turn: Turn) -> None:
        from PIL import Image

        from worker.decoders import DECODERS
        from worker.sources import SOURCES

        SOURCES.update(setup.registries["sources"])
        DECODERS.update(setup.registries["decoders"])
        Image.MAX_IMAGE_PIXELS = setup.limits.max_pixels
        Image.preinit()  # the common formats' plugins, now: not inside the first item's deadline
        # Pillow only warns between its limit and twice that; the guards refuse instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        self.setup = setup
        self.record = record
        self.turn = turn
        self.decoders: dict[str, Any] = {}
        self.recent: dict[tuple[str, str], Outcome] = {}  # by (decoder, content hash)

    def obtain(self, group: Group, what: str | bytes | Check
               ) -> bytes | Checked | ItemError | TransientError:
        """The item's bytes (fetched from its source), or why there are none; for a Check,
        whether its URI passes what a fetch would check first."""
        try:
            if isinstance(what, Check):
                source, budget = self.source(what.uri, group)
                source.check(what.uri, budget)
                return Checked()
            return what if isinstance(what, bytes) else self.fetch(what, group)
        except (ItemError, TransientError) as exc:
            return exc
        except Exception as exc:  # a bug or an odd URI must not fail the item's neighbours
            return ItemError(Reason.INTERNAL_ERROR,
                             redact(f"fetching failed: {type(exc).__name__}: {exc}"))

    def prepare(self, group: Group, index: int, data: bytes | ItemError | TransientError
                ) -> tuple[str | None, Outcome]:
        """The answer for an obtained item: its content hash and what its decoder made."""
        if not isinstance(data, bytes):  # an error, or a Check's answer
            return None, data
        sha = hashlib.sha256(data).hexdigest()
        if sha in group.known:
            return sha, group.known[sha]
        key = (group.decoder or self.setup.decoder, sha)
        if key not in self.recent:
            self.recent[key] = self.decode(group.job, index, sha, data, key[0])
            while len(self.recent) > RECENT:
                self.recent.pop(next(iter(self.recent)))
        return sha, self.recent[key]

    def fetch(self, uri: str, group: Group) -> bytes:
        source, budget = self.source(uri, group)
        return source.fetch(uri, budget)

    def source(self, uri: str, group: Group) -> tuple[Source, Budget]:
        """The URI's source and budget (its scheme checked): its ``fetch`` makes the source's
        own checks first, and its ``check`` makes only those."""
        from worker.sources import Budget, check_uri, source_for

        settings = self.setup.settings
        check_uri(uri)
        return source_for(uri, settings), Budget(time.monotonic() + settings.item_timeout,
                                                 group.roots)

    def decode(self, job: int, index: int, sha: str, data: bytes, decoder: str) -> Outcome:
        limits = self.setup.limits
        prepare = self._prepare(decoder)
        with self.turn.decoding():
            self.record.write(job, index, sha)
            try:
                with bounded(limits.seconds, limits.max_memory):
                    return prepare(data, self.setup.spec, limits)
            except ItemError as exc:
                return exc
            except MemoryError:
                return ItemError(Reason.TOO_MUCH_MEMORY,
                                 f"decoding needs more than the {limits.max_memory // 2**20} "
                                 "MiB allowed (TAGGER_MAX_IMAGE_MEMORY)")
            except Exception as exc:  # a decoder's bug is the item's failure, not the chunk's
                return ItemError(Reason.UNDECODABLE, f"{type(exc).__name__}: {exc}")
            finally:
                self.record.clear()

    def _prepare(self, decoder: str) -> Any:
        """A decoder's ``prepare`` by its registered name, or a ``module:function``."""
        if decoder not in self.decoders:
            from worker.decoders import DECODERS

            module, _, function = decoder.partition(":")
            self.decoders[decoder] = (getattr(importlib.import_module(module), function)
                                      if function else DECODERS.get(decoder).prepare)
        return self.decoders[decoder]


def serve(conn: Connection, child: Child) -> None:
    """Answer groups until told to stop; leave early, between groups, to give memory back."""
    baseline, served = memory()[1], 0
    while True:
        try:
            group = conn.recv()
        except EOFError:
            return
        if group is None:
            return
        waiting, obtained = deque(group.items), deque()
        while waiting or obtained:
            # While the model has the cores, fetch ahead: then decode what was fetched.
            while waiting and (not obtained or child.turn.closed()):
                index, what = waiting.popleft()
                obtained.append((index, child.obtain(group, what)))
            index, data = obtained.popleft()
            sha, outcome = child.prepare(group, index, data)
            conn.send((group.job, index, sha, outcome))
            served += 1
        if served >= MAX_ITEMS or memory()[1] - baseline > RECYCLE_ABOVE:
            return


def main(argv: list[str]) -> None:
    fd, parent, record_fd, turns_fd = (int(a) for a in argv[1:5])
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the parent's to handle
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    conn = Connection(fd)
    sys.path[:0] = [p for p in conn.recv() if p not in sys.path]  # the parent's imports
    setup: Setup = conn.recv()
    child = Child(setup, Record(record_fd), Turn(turns_fd, setup.slot, setup.take_turns))
    serve(conn, child)


if __name__ == "__main__":
    main(sys.argv)
