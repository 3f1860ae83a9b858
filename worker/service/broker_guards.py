"""The broker is not trusted: malformed entries are parked, bombs refused, timeouts agreed.

- ``Transport``: kombu's Redis transport, except that an entry that is not a well-formed kombu
  envelope is moved to a dead-letter list with a log line instead of ending the worker.
- ``cap_decompression``: a compressed message may unpack to at most ``MAX_MESSAGE_BYTES``.
- ``QoS``: kombu's restore sweep runs only while every worker on the Redis database agrees on
  one visibility timeout (worker/service/visibility.py).
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from queue import Empty
from typing import Any

from kombu import compression
from kombu.transport import redis as kombu_redis

from worker.core.redact import redact
from worker.service import visibility

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 32 * 2**20  # a chunk of 10,000 long URLs is a few MB
DEAD_LETTERS = "tagger.dead-letters"  # a Redis list: the last entries that were refused
DEAD_LETTERS_KEPT = 1000


def envelope_problem(message: Any) -> str | None:
    """Why a decoded Redis entry is not a kombu message envelope we can handle, or None."""
    if not isinstance(message, dict):
        return f"a {type(message).__name__}, not an object"
    properties, body = message.get("properties"), message.get("body")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
        return "no properties.delivery_tag"
    if properties.get("body_encoding") not in (None, "base64") or not isinstance(body, str):
        return "no text body"
    if len(body) > MAX_MESSAGE_BYTES:
        return f"body of {len(body)} bytes, over {MAX_MESSAGE_BYTES}"
    headers = message.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "headers are not an object"
    return None


class QoS(kombu_redis.QoS):
    """kombu's, except that expired reservations are re-queued only while the workers agree on
    the visibility timeout: a sweep with a shorter one would re-run others' running chunks."""

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        if visibility.may_sweep():
            super().restore_visible(start, num, interval)


class Channel(kombu_redis.Channel):
    """Reads as kombu does; an entry that is not JSON is parked instead of raised."""

    QoS = QoS

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except ValueError as exc:  # json.JSONDecodeError: the entry was popped, nothing lost
            self.park(getattr(exc, "doc", ""), f"not JSON: {exc}")
            return True

    def _get(self, queue: str) -> Any:
        try:
            return super()._get(queue)
        except ValueError as exc:
            self.park(getattr(exc, "doc", ""), f"not JSON: {exc}")
            raise Empty() from exc

    def park(self, raw: Any, problem: str, queue: str = "?") -> None:
        text = dead_letter(raw)
        log.error("refused a malformed message from queue %s (%s); kept in the Redis list %s",
                  queue, problem, DEAD_LETTERS)
        try:
            with self.conn_or_acquire() as client:
                client.lpush(DEAD_LETTERS, text)
                client.ltrim(DEAD_LETTERS, 0, DEAD_LETTERS_KEPT - 1)
        except Exception as exc:  # parking is best effort: the entry is gone from the queue
            log.warning("could not keep the refused message: %s", exc)


def dead_letter(raw: Any) -> str:
    """What the dead-letter list keeps of a refused entry: its text with secrets masked, the
    body decoded where it can be (base64, zlib) so that its secrets can be masked too, and
    left out where it cannot."""
    if isinstance(raw, dict) and "body" in raw:
        raw = {**raw, "body": _readable_body(raw)}
    text = raw if isinstance(raw, str) else json.dumps(raw, default=repr, ensure_ascii=False)
    return redact(text[:65536])


def _readable_body(envelope: dict[str, Any]) -> Any:
    body = envelope["body"]
    properties, headers = (envelope.get(k) if isinstance(envelope.get(k), dict) else {}
                           for k in ("properties", "headers"))
    if not isinstance(body, str) or properties.get("body_encoding") != "base64":
        return body
    try:
        data = base64.b64decode(body, validate=True)
        if headers.get("compression") == "application/x-gzip":
            data = _capped_zlib(data)
        return data.decode("utf-8")
    except (ValueError, zlib.error):  # binascii.Error and UnicodeDecodeError are ValueErrors
        return f"<{len(body)} characters that do not decode to text: not kept>"


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with envelope checks before delivery."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is None:
            super()._deliver(message, queue)
            return
        for channel in self.channels:
            channel.park(message, problem, queue)
            break


def _capped_zlib(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    data = inflater.decompress(body, MAX_MESSAGE_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"compressed message unpacks to over {MAX_MESSAGE_BYTES} bytes")
    return data


def _refused(content_type: str) -> Any:
    def decode(_body: bytes) -> bytes:
        raise ValueError(f"{content_type} compression is not accepted (zlib only)")
    return decode


def cap_decompression() -> None:
    """zlib with a size cap; every other compression refused (a message is then dropped)."""
    for content_type, encoder in list(compression._encoders.items()):
        decoder = _capped_zlib if content_type == "application/x-gzip" else _refused(content_type)
        compression.register(encoder, decoder, content_type)
