"""Turns on shared CPU cores: decoders pause while a forward pass runs on the same cores."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class Turns:
    """A readers-writer gate: many decoders at once, or the model alone (when ``enabled``).

    On a CPU the model's intra-op threads already use every core; a decoder that preempts one
    of them stalls the others at the next barrier while they spin. Taking turns costs nothing
    there (both stages use all cores in turn) and keeps each one at full speed. On a GPU the
    stages use different hardware and overlap freely (``enabled=False``). The model's turn is
    exclusive either way: one forward pass at a time per process.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._cond = threading.Condition()
        self._decoders = 0
        self._model_waiting = False
        self._model = threading.Lock()

    @contextlib.contextmanager
    def decoding(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self._cond:
            self._cond.wait_for(lambda: not self._model_waiting)
            self._decoders += 1
        try:
            yield
        finally:
            with self._cond:
                self._decoders -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def model(self) -> Iterator[None]:
        """The model's turn: new decodes wait, running ones finish first."""
        with self._model:
            if not self.enabled:
                yield
                return
            # Set inside try: an exception while waiting (a time limit) must not leave the flag
            # set, or every later decode would wait for ever. One model turn at a time (the lock
            # above), so a flag is enough.
            try:
                with self._cond:
                    self._model_waiting = True
                    self._cond.wait_for(lambda: self._decoders == 0)
                yield
            finally:
                with self._cond:
                    self._model_waiting = False
                    self._cond.notify_all()
