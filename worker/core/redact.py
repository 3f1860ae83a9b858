"""Secrets out of text and URIs: what is shown (masked with ``***``) and what is stored (removed).

- ``redact(text)``: any text (a log line, an error, an export): a URL's password, or its
  user name when that is all it has (a token), and secret query parameters become ``***``.
- ``stored_uri(uri)``: a URI as the results database keeps it, and the text its identity
  (``uri_hash``) is computed on: without userinfo, secret parameters and, when it is signed,
  the parameters that come and go with each signature. A presigned URL signed again every
  night is then one image.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, unquote_plus

MASK = "***"
# scheme://userinfo@ : the userinfo ends at the authority's last @ (user:p@ss@host).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)"
                       r"(?P<userinfo>[^/?#\s\"'<>\\{}|^`\[\]]*)@")
# A query or fragment parameter; its name may be percent-encoded (X%2DAmz%2DSignature).
_PARAM = re.compile(r"(?P<name>[?&;#][A-Za-z0-9_.%+-]+)=(?P<value>[^&;#\s\"'<>]*)")
# AWS/GCS/Azure/CloudFront/OSS/COS signatures and credentials, tokens, passwords, API keys.
_SECRET_WORDS = ("signature", "credential", "token", "secret", "password", "passwd", "auth",
                 "session", "policy")
_SECRET_NAMES = {"sig", "sign", "pwd", "q-ak"}
_SECRET_ENDINGS = ("key", "key-pair-id", "keyid", "accessid")
# Parameters a signature brings along (its date, expiry, algorithm, Azure SAS fields): not
# secret, but they change with every signature, so a signed URI's identity leaves them out.
_SIGNING_PREFIXES = ("x-amz-", "x-goog-", "x-oss-", "q-")
_SIGNING_NAMES = {"expires", "e", "sv", "ss", "srt", "sp", "se", "st", "spr", "sr", "si", "sdd",
                  "sip", "skoid", "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid",
                  "ses", "rscc", "rscd", "rsce", "rscl", "rsct"}
# scheme://authority path ?query #fragment, as written (nothing normalised)
_PARTS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#]*)"
                    r"(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?", re.S)


def _name(raw: str) -> str:
    return unquote_plus(raw).lower()


def is_secret_parameter(name: str) -> bool:
    name = _name(name)
    return (any(word in name for word in _SECRET_WORDS) or name in _SECRET_NAMES
            or name.endswith(_SECRET_ENDINGS))


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    # The user name helps find the account; alone, it is the credential (https://TOKEN@host).
    return f"{match['scheme']}{user}:{MASK}@" if colon else f"{match['scheme']}{MASK}@"


def _nested(value: str) -> str | None:
    """A parameter's value as the text that holds a secret (a URL inside it, percent-encoded
    once or more: ?next=https%3A%2F%2Fu%3Apw%40h%2F...%3Fsig%3D...), or None."""
    text = value
    for _ in range(4):
        if redact(text) != text:
            return text
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return None


def _mask_parameter(match: re.Match[str]) -> str:
    name, value = match["name"], match["value"]
    if is_secret_parameter(name[1:]):
        return f"{name}={MASK}"
    inner = _nested(value) if "%" in value else None
    return f"{name}={quote(redact(inner), safe='/:*')}" if inner else match[0]


def redact(text: str) -> str:
    """``text`` with URL passwords, token user names and secret parameters masked."""
    if "://" in text and "@" in text:
        text = _USERINFO.sub(_mask_userinfo, text)
    if "=" in text:
        text = _PARAM.sub(_mask_parameter, text)
    return text


def _kept(parameters: str, signed: bool) -> str:
    kept = []
    for part in parameters.split("&"):
        raw, equals, value = part.partition("=")
        name = _name(raw)
        if is_secret_parameter(name) or (signed and (
                name.startswith(_SIGNING_PREFIXES) or name in _SIGNING_NAMES)):
            continue
        inner = _nested(value) if equals else None
        if inner is not None:  # a URL inside: stored in its stored form, or not at all
            inner = stored_uri(inner)
            if redact(inner) != inner:
                continue
            part = f"{raw}={quote(inner, safe='') if '%' in value else inner}"
        kept.append(part)
    return "&".join(kept)


def stored_uri(uri: str) -> str:
    """``uri`` without what must not be stored and does not identify the image.

    Nothing else changes: a URI without secrets is returned as it is.
    """
    parts = _PARTS.fullmatch(uri) if "://" in uri else None
    if parts is None or redact(uri) == uri:
        return uri
    query, fragment = parts["query"], parts["fragment"]
    signed = query is not None and any(is_secret_parameter(p.partition("=")[0])
                                       for p in query.split("&"))
    query = None if query is None else _kept(query, signed)
    if fragment is not None and redact(f"#{fragment}") != f"#{fragment}":
        fragment = None  # never sent to the server: an OAuth #access_token=..., say
    return (parts["head"] + parts["authority"].rpartition("@")[2] + parts["path"]
            + (f"?{query}" if query else "") + (f"#{fragment}" if fragment is not None else ""))
