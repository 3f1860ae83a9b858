"""A batch run whole, or in halves where it fails: out of memory, or one bad item among many.

A retry runs only once the failed attempt is gone: inside an ``except`` block the exception's
traceback keeps the failed call's frames alive, and with them every tensor they held (a whole
forward pass's activations), so the halves would run beside the memory that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def in_halves(items: Sequence[T], run: Callable[[Sequence[T]], Sequence[R]],
              splits: Callable[[BaseException], bool], release: Callable[[int], None]
              ) -> list[R | BaseException]:
    """``run(items)``, one result per item; where it raises what ``splits`` accepts, each half
    again, down to one item, whose result is then that exception (without its traceback).
    Anything else is raised. ``release(size)`` runs after each failed attempt of ``size`` items,
    once its frames are gone, before the next attempt (free the device's cached memory)."""
    out: list[R | BaseException | None] = [None] * len(items)
    spans = [(0, len(items))] if items else []
    while spans:
        start, end = spans.pop()
        failure = _attempt(run, items, start, end, splits, out)
        if failure is None:
            continue
        release(end - start)
        if end - start == 1:
            out[start] = failure
        else:
            middle = (start + end) // 2
            spans += [(middle, end), (start, middle)]  # the first half first
    return out  # type: ignore[return-value]


def _attempt(run: Callable[[Sequence[T]], Sequence[R]], items: Sequence[T], start: int,
             end: int, splits: Callable[[BaseException], bool],
             out: list[R | BaseException | None]) -> BaseException | None:
    try:
        results = list(run(items[start:end]))
    except Exception as exc:
        if not splits(exc):
            raise
        return _bare(exc)
    if len(results) != end - start:
        raise ValueError(f"{len(results)} results for {end - start} items")
    out[start:end] = results
    return None


def _bare(exc: BaseException) -> BaseException:
    """The exception without what keeps the failed attempt's frames alive."""
    exc.__traceback__ = None
    exc.__context__ = exc.__cause__ = None
    return exc
