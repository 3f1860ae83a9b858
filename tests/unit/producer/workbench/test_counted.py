"""A run's counts off the request path: a page never waits past its patience for a first count,
shows a count while it is fresh, and a stale one while the next is being made."""

from __future__ import annotations

import threading

from producer.workbench.counted import Counted
from testkit.services import wait_until


def test_a_slow_first_count_is_not_waited_for_and_shown_once_made():
    release = threading.Event()
    calls: list[int] = []

    def count() -> str:
        calls.append(1)
        release.wait(60)
        return "counted"

    counted = Counted(fresh=3600, patience=0.01)
    try:
        assert counted.get("run", count) == (None, None)  # still counting
        assert counted.get("run", count) == (None, None)  # the same count, not a second one
        release.set()
        value, at = wait_until(lambda: counted.get("run", count)[1] and counted.get("run", count),
                               30)
        assert value == "counted" and at is not None and len(calls) == 1
        assert counted.get("run", lambda: "again") == ("counted", at)  # fresh: kept
    finally:
        counted.close()


def test_a_stale_count_is_shown_while_the_next_is_made():
    counted = Counted(fresh=0.0, patience=30)
    release = threading.Event()
    try:
        assert counted.get("run", lambda: 1)[0] == 1
        first = counted.get("run", lambda: release.wait(60) and 2)  # stale: shown at once
        assert first[0] == 1
        release.set()
        wait_until(lambda: counted.get("run", lambda: 2)[0] == 2, 30)
    finally:
        counted.close()
