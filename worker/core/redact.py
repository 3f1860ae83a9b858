"""Secrets out of text: passwords in URLs, query-string signatures and tokens become ``***``."""

from __future__ import annotations

import re

MASK = "***"
# user:password@ in any scheme://...; the user name stays, it helps find the account.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*):[^/@\s]*@")
_PARAM = re.compile(r"(?P<name>[?&;][A-Za-z0-9_.-]+)=(?P<value>[^&;#\s\"'<>]*)")
# AWS/GCS/Azure/CloudFront signatures and credentials, tokens, passwords, API keys.
_SECRET_WORDS = ("signature", "credential", "token", "secret", "password", "passwd", "auth",
                 "session", "policy")


def is_secret_parameter(name: str) -> bool:
    name = name.lower()
    return (any(word in name for word in _SECRET_WORDS) or name in {"sig", "pwd"}
            or name.endswith("key") or name.endswith("key-pair-id"))


def redact(text: str) -> str:
    """``text`` with URL passwords and secret query parameters masked."""
    if "://" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    if "=" in text:
        text = _PARAM.sub(lambda m: f"{m['name']}={MASK}" if is_secret_parameter(m["name"][1:])
                          else m[0], text)
    return text
