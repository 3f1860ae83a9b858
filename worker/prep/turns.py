"""Turns on shared CPU cores: decode processes pause while a forward pass runs on the same cores.

On a CPU the model's intra-op threads already use every core; a decoder that preempts one of
them stalls the others at the next barrier while they spin. Taking turns costs nothing there
(both stages use all cores in turn) and keeps each at full speed. On a GPU the stages use
different hardware and overlap freely (no turns). The gate lives in a small shared memory file
that the model's process and its decode processes map: byte 0 says "the model wants the cores",
byte 1 + N says "process N is decoding".
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Iterator

POLL = 0.0005  # seconds between looks at the gate: short next to a decode or a forward pass
# A decode process waiting out a forward pass looks less and less often: waking thousands of
# times a second would take cycles from the model's threads on the very cores it waits for.
LONGEST_POLL = 0.005


class Turns:
    """The gate as the model's process sees it (``enabled``: on a CPU)."""

    def __init__(self, enabled: bool, processes: int) -> None:
        self.enabled = enabled
        self.fd = os.memfd_create("tagger-turns", 0)
        os.ftruncate(self.fd, 1 + processes)
        self.memory = mmap.mmap(self.fd, 1 + processes)
        self._lock = threading.Lock()  # one forward pass at a time per process

    @contextlib.contextmanager
    def model(self) -> Iterator[None]:
        """The model's turn: new decodes wait, running ones finish first."""
        with self._lock:
            if not self.enabled:
                yield
                return
            self.memory[0] = 1
            try:
                while any(self.memory[1:]):
                    time.sleep(POLL)
                yield
            finally:
                self.memory[0] = 0

    def forget(self, slot: int) -> None:
        """A decode process that died mid-decode leaves its mark: clear it, or the model
        would wait for it for ever."""
        self.memory[1 + slot] = 0

    def close(self) -> None:
        self.memory.close()
        os.close(self.fd)


class Turn:
    """The gate as decode process ``slot`` sees it (the file descriptor it inherited)."""

    def __init__(self, fd: int, slot: int, enabled: bool) -> None:
        self.enabled = enabled
        self.slot = 1 + slot
        self.memory = mmap.mmap(fd, 0)

    def closed(self) -> bool:
        """The model has the cores now: a decode would wait."""
        return self.enabled and bool(self.memory[0])

    @contextlib.contextmanager
    def decoding(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        while True:
            pause = POLL
            while self.memory[0]:
                time.sleep(pause)
                pause = min(2 * pause, LONGEST_POLL)
            self.memory[self.slot] = 1
            if not self.memory[0]:  # the model did not ask in between: ours
                break
            self.memory[self.slot] = 0
        try:
            yield
        finally:
            self.memory[self.slot] = 0
