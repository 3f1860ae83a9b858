"""Who may use the workbench and as whom: the bind rule, reviewers from TAGGER_SERVE_TOKEN
(a bearer token or basic auth), CSRF tokens, and the headers every answer carries."""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from worker.core.errors import ConfigError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Nothing but this server: no inline script or style, no frames, forms post here only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
           (b"cross-origin-resource-policy", b"same-origin")]
Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                Awaitable[None]]


def is_local(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """TAGGER_SERVE_TOKEN: one token (reviewers name themselves as the basic-auth user) or
    ``name=token`` pairs separated by commas (the token names its reviewer). Without one the
    workbench serves this machine only, and its reviewer is the user running it."""

    tokens: tuple[tuple[str | None, str], ...] = ()
    local_reviewer: str = field(default_factory=getpass.getuser)
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def parse(cls, raw: str) -> Access:
        pairs: list[tuple[str | None, str]] = []
        for part in (p.strip() for p in raw.split(",") if p.strip()):
            name, _, token = part.partition("=")
            named = bool(token) and re.fullmatch(r"[\w.@-]{1,64}", name) is not None
            pairs.append((name, token) if named else (None, part))
        if any(len(token) < 16 for _, token in pairs):
            raise ConfigError("TAGGER_SERVE_TOKEN: each token must be at least 16 characters "
                              "(python -c 'import secrets; print(secrets.token_urlsafe())')")
        return cls(tuple(pairs))

    def check_bind(self, host: str) -> None:
        if not self.tokens and not is_local(host):
            raise ConfigError(f"--host {host} would serve other machines: set "
                              "TAGGER_SERVE_TOKEN first (reviewers then sign in with it), "
                              "or bind 127.0.0.1")

    def reviewer(self, authorization: str) -> str | None:
        """The reviewer an Authorization header names, or None if it names nobody."""
        if not self.tokens:
            return self.local_reviewer
        kind, _, value = authorization.partition(" ")
        user, given = None, value.strip()
        if kind.lower() == "basic":
            try:
                user, _, given = base64.b64decode(given).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
        elif kind.lower() != "bearer":
            return None
        for name, token in self.tokens:
            if hmac.compare_digest(given.encode(), token.encode()):
                return name or (user.strip() if user and user.strip() else "reviewer")
        return None

    def csrf(self, reviewer: str) -> str:
        """The form token of a reviewer: pages carry it, every POST must send it back."""
        return hmac.new(self.secret, reviewer.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, reviewer: str, given: str) -> bool:
        return hmac.compare_digest(self.csrf(reviewer), given)

    def allowed_hosts(self, host: str) -> list[str]:
        """Host headers answered: anything behind a token; else this machine's names only (a
        page elsewhere cannot rebind its own name to 127.0.0.1 and read ours)."""
        return ["*"] if self.tokens else [*LOCAL_HOSTS, host]


def guard(app: ASGI, access: Access) -> ASGI:
    """Every answer gets the security headers; without a reviewer, 401 asking for one."""

    async def guarded(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope["headers"])
        reviewer = access.reviewer(headers.get(b"authorization", b"").decode("latin-1"))

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        if reviewer is None:
            await with_headers({"type": "http.response.start", "status": 401, "headers": [
                (b"www-authenticate", b'Basic realm="catalog-tagger workbench"'),
                (b"content-type", b"text/plain; charset=utf-8")]})
            return await send({"type": "http.response.body",
                               "body": b"sign in with TAGGER_SERVE_TOKEN\n"})
        scope.setdefault("state", {})["reviewer"] = reviewer
        return await app(scope, receive, with_headers)

    return guarded
