"""Who may use the workbench: the bind rule, reviewers named by their token or basic auth,
CSRF tokens per reviewer."""

from __future__ import annotations

import base64

import pytest

from producer.workbench.access import Access, is_local
from worker.core.errors import ConfigError

TOKEN = "s3cret-token-0123456789"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_loopback_only_without_a_token():
    assert all(map(is_local, ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"]))
    assert not any(map(is_local, ["0.0.0.0", "192.168.1.5", "::", "example.com"]))
    with pytest.raises(ConfigError, match="TAGGER_SERVE_TOKEN"):
        Access().check_bind("0.0.0.0")
    Access().check_bind("127.0.0.1")
    Access.parse(TOKEN).check_bind("0.0.0.0")


def test_the_reviewer_comes_from_the_token_or_basic_auth():
    assert Access(local_reviewer="me").reviewer("") == "me"  # no token: this machine's user
    shared = Access.parse(TOKEN)
    assert shared.reviewer("") is None
    assert shared.reviewer(basic("ann", TOKEN)) == "ann"
    assert shared.reviewer(basic("ann", "wrong-token-0123456789")) is None
    assert shared.reviewer(f"Bearer {TOKEN}") == "reviewer"
    named = Access.parse(f"ann={TOKEN},bob=another-token-987654321")
    assert named.reviewer(basic("mallory", TOKEN)) == "ann"  # the token names its reviewer
    assert named.reviewer("Bearer another-token-987654321") == "bob"
    assert named.reviewer("Digest x") is None and named.reviewer("Basic !!!") is None


def test_tokens_are_long_enough():
    with pytest.raises(ConfigError, match="16 characters"):
        Access.parse("short")


def test_a_csrf_token_is_the_reviewers_own():
    access = Access()
    assert access.csrf_ok("ann", access.csrf("ann"))
    assert not access.csrf_ok("bob", access.csrf("ann"))
    assert not access.csrf_ok("ann", "")
    assert not Access().csrf_ok("ann", access.csrf("ann"))  # another server's secret
