"""Progress of long work on stderr: a tqdm bar on a terminal, a plain line now and then if not."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

PLAIN_EVERY = 10.0  # seconds between lines when stderr is a file or a pipe


class Progress:
    """Counts ``done`` of ``total`` (which may grow) with a rate and an ETA.

    ``watching``: work that goes on elsewhere; its first count was done before watching began
    (`producer wait` started late) and is shown but not counted in the rate.
    """

    def __init__(self, description: str, total: int | None = None, unit: str = " images",
                 out: TextIO | None = None, watching: bool = False) -> None:
        self.out = out or sys.stderr
        self.description = description
        self.unit = unit.strip()
        self.bar = tqdm(total=total, desc=description, unit=unit, file=self.out,
                        dynamic_ncols=True) if self.out.isatty() else None
        self.total, self.done = total, 0
        self.baseline: int | None = None if watching else 0  # done before watching began
        self.started = self.printed = time.monotonic()

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        """Set the absolute count (and total); ``note`` goes after the figures."""
        self.total = total if total is not None else self.total
        if self.baseline is None:
            self.baseline = self.done = done
            self.started = time.monotonic()
            if self.bar is not None:  # tqdm's rate counts from ``initial``, not from 0
                self.bar.n = self.bar.initial = self.bar.last_print_n = done
        if self.bar is not None:
            if self.total is not None and self.bar.total != self.total:
                self.bar.total = self.total
            self.bar.update(done - self.done)
            if note:
                self.bar.set_postfix_str(note)
        self.done = done
        if self.bar is None and time.monotonic() - self.printed >= PLAIN_EVERY:
            self.line(note)

    def line(self, note: str = "") -> None:
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = (self.done - (self.baseline or 0)) / elapsed
        of = f"/{self.total}" if self.total is not None else ""
        eta = (f", ETA {int((self.total - self.done) / rate)}s"
               if rate and self.total is not None and self.total > self.done else "")
        print(f"{self.description}: {self.done}{of} {self.unit}, {rate:.2f} {self.unit}/s{eta}"
              + (f" ({note})" if note else ""), file=self.out, flush=True)
        self.printed = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self.line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        elif self.bar is not None:  # no closing figures: the error is the one line shown
            self.bar.close()
