"""Workers on one Redis database agree on one visibility timeout: each holds a claim, checked.

kombu's restore sweep re-queues any worker's reserved chunk once the *sweeping* worker's timeout
has passed, so two timeouts on one database re-run each other's running chunks. Each worker
holds a claim key of its own (its timeout and since when), refreshed every ``HEARTBEAT`` seconds,
re-created with a warning if it vanished (deleted by hand, expired), and deleted when the worker
stops. No single key can be deleted to let a worker in:

- a worker refuses to start while a live claim names another timeout;
- it sweeps only once it has run for ``SETTLE`` seconds (by then every running worker has
  re-created a deleted claim) and while every live claim agrees with its own;
- it stops when it finds an older claim with another timeout (it started while that claim was
  missing).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from worker.core.errors import ConfigError
from worker.core.redact import redact
from worker.core.settings import Settings

log = logging.getLogger(__name__)
PREFIX = "tagger:visibility-timeout:"  # not "tagger.": queues are named so
HEARTBEAT = 10  # seconds between refreshes of a worker's claim
EXPIRES = 60  # a claim outlives a worker that died without deleting it by this long
SETTLE = 2 * HEARTBEAT  # no sweep before every running worker has refreshed its claim once


@dataclass(frozen=True)
class Claim:
    """One worker's visibility timeout, since when it runs, and where it is kept."""

    key: str
    timeout: int
    since: float

    def value(self) -> str:
        return json.dumps({"timeout": self.timeout, "since": self.since})


class Claims:
    """This worker's claim and its checks against everyone else's."""

    def __init__(self, settings: Settings) -> None:
        import redis

        self.settings = settings
        self.client = redis.Redis.from_url(settings.broker_url, socket_timeout=10)
        self.ours = Claim(f"{PREFIX}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                          settings.visibility_timeout, time.time())
        self.started = time.monotonic()

    def others(self) -> list[Claim]:
        keys = [k for k in self.client.scan_iter(match=f"{PREFIX}*", count=500)
                if k.decode() != self.ours.key]
        found = []
        for key, raw in zip(keys, self.client.mget(keys) if keys else [], strict=True):
            try:
                data = json.loads(raw)
                found.append(Claim(key.decode(), int(data["timeout"]), float(data["since"])))
            except (TypeError, ValueError, KeyError):  # expired meanwhile, or not ours
                continue
        return found

    def disagreeing(self) -> list[Claim]:
        return [c for c in self.others() if c.timeout != self.ours.timeout]

    def problem(self, theirs: Claim) -> str:
        return (f"workers on {redact(self.settings.broker_url)} use TAGGER_VISIBILITY_TIMEOUT="
                f"{theirs.timeout}, this one {self.ours.timeout}: all workers on one Redis "
                "database must agree (kombu re-queues any worker's chunk after the shortest "
                f"timeout). Set TAGGER_VISIBILITY_TIMEOUT={theirs.timeout}, or stop those "
                f"workers first (a claim ends when its worker stops, or {EXPIRES}s after it died)")

    def claim(self) -> None:
        """At start: refuse a timeout that differs from a live claim's, then hold ours."""
        for theirs in self.disagreeing():
            raise ConfigError(self.problem(theirs))
        self.client.set(self.ours.key, self.ours.value(), ex=EXPIRES)

    def heartbeat(self) -> str | None:
        """Refresh our claim (re-created, with a warning, if it vanished); the problem if an
        older claim disagrees: then this worker is the one that must not run."""
        if not self.client.set(self.ours.key, self.ours.value(), ex=EXPIRES, xx=True):
            log.warning("this worker's visibility-timeout claim %s had vanished (deleted?); "
                        "restored", self.ours.key)
            self.client.set(self.ours.key, self.ours.value(), ex=EXPIRES)
        older = [c for c in self.disagreeing() if c.since < self.ours.since]
        return self.problem(older[0]) if older else None

    def may_sweep(self) -> bool:
        if time.monotonic() - self.started < SETTLE:
            return False
        return not self.disagreeing()

    def release(self) -> None:
        self.client.delete(self.ours.key)


_claims: Claims | None = None  # this worker's, made in its main process at start


def agree(settings: Settings) -> None:
    """Claim this Redis database's visibility timeout, or refuse one that differs."""
    global _claims
    if settings.embedded_broker:
        return
    claims = Claims(settings)
    claims.claim()
    _claims = claims


def heartbeat() -> None:
    """Every HEARTBEAT seconds while the worker runs; stops a worker that must not run."""
    import redis

    if _claims is None:
        return
    try:
        problem = _claims.heartbeat()
    except redis.RedisError as exc:
        log.warning("could not refresh the visibility-timeout claim: %s", exc)
        return
    if problem:
        from celery.worker import state

        log.critical("stopping: %s", problem)
        state.should_stop = 1


def may_sweep() -> bool:
    """Whether kombu may re-queue expired reservations now (always, outside a worker)."""
    import redis

    if _claims is None:
        return True
    try:
        return _claims.may_sweep()
    except redis.RedisError:
        return False


def release() -> None:
    import redis

    if _claims is not None:
        try:
            _claims.release()
        except redis.RedisError as exc:
            log.warning("could not delete the visibility-timeout claim: %s", exc)
