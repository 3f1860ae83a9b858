"""Fetch the bytes of an image URI: s3://bucket/key, a local path or file:// URI, or http(s)://."""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import boto3
import botocore.exceptions
import urllib3
from botocore.config import Config

from worker.errors import ItemError, TransientError

# S3 answers that mean "this object will not be readable by retrying".
_PERMANENT_S3 = {"NoSuchKey": "not-found", "404": "not-found", "NotFound": "not-found",
                 "NoSuchBucket": "not-found", "AccessDenied": "forbidden", "403": "forbidden",
                 "InvalidObjectState": "forbidden"}
_MAX_REDIRECTS = 5
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def s3_client(timeout: float, pool: int) -> object:
    """One S3 client per process (clients are thread-safe); config from boto3's own sources."""
    config = Config(retries={"mode": "standard", "max_attempts": 5},
                    connect_timeout=timeout, read_timeout=timeout, max_pool_connections=pool)
    return boto3.session.Session().client("s3", config=config)


def fetch(uri: str, *, max_bytes: int, timeout: float, allow_private: bool = False,
          allow_networks: Sequence[Network] = (), pool: int = 16) -> bytes:
    """Return the bytes at ``uri``; ItemError for a permanent failure, TransientError otherwise."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "s3":
        return fetch_s3(uri, max_bytes=max_bytes, timeout=timeout, pool=pool)
    if scheme in {"http", "https"}:
        return fetch_http(uri, max_bytes=max_bytes, timeout=timeout, allow_private=allow_private,
                          allow_networks=allow_networks)
    if scheme in {"", "file"}:
        return fetch_file(uri, max_bytes=max_bytes)
    raise ItemError("bad-uri", f"unsupported URI scheme {scheme!r}")


def split_s3(uri: str) -> tuple[str, str]:
    # Not urlsplit: a key is raw text, and '?' or '#' in it are part of the key.
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ItemError("bad-uri", f"not an s3://bucket/key URI: {uri}")
    return bucket, key


def fetch_s3(uri: str, *, max_bytes: int, timeout: float, pool: int = 16) -> bytes:
    bucket, key = split_s3(uri)
    try:
        response = s3_client(timeout, pool).get_object(Bucket=bucket, Key=key)
        size = response.get("ContentLength") or 0
        if size > max_bytes:
            response["Body"].close()
            raise ItemError("too-large", f"object is {size} bytes, over the cap of {max_bytes}")
        return _read_capped(response["Body"], max_bytes)
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _PERMANENT_S3:
            raise ItemError(_PERMANENT_S3[code], f"S3 {code}: s3://{bucket}/{key}") from exc
        raise TransientError(f"S3 {code or 'error'} for s3://{bucket}/{key}: {exc}") from exc
    except (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(f"S3 unreachable for s3://{bucket}/{key}: {exc}") from exc


def _read_capped(stream: object, max_bytes: int) -> bytes:
    data = stream.read(max_bytes + 1)  # type: ignore[attr-defined]
    if len(data) > max_bytes:
        raise ItemError("too-large", f"image is over the cap of {max_bytes} bytes")
    return data


def fetch_file(uri: str, *, max_bytes: int) -> bytes:
    path = Path(unquote(urlsplit(uri).path) if uri.startswith("file:") else uri)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ItemError("too-large", f"file is {size} bytes, over the cap of {max_bytes}")
        with path.open("rb") as handle:
            return _read_capped(handle, max_bytes)
    except FileNotFoundError as exc:
        raise ItemError("not-found", f"no such file: {path}") from exc
    except PermissionError as exc:
        raise ItemError("forbidden", f"cannot read {path}: permission denied") from exc
    except IsADirectoryError as exc:
        raise ItemError("bad-uri", f"{path} is a directory") from exc


def check_address(host: str, port: int, allow_private: bool,
                  allow_networks: Sequence[Network] = ()) -> str:
    """Resolve ``host`` and return an address it may be fetched from, refusing internal ones."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ItemError("not-found", f"cannot resolve {host}: {exc}") from exc
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not (allow_private or ip.is_global or any(ip in net for net in allow_networks)):
            raise ItemError("blocked-address",
                            f"{host} resolves to {ip}, a non-public address (set "
                            "TAGGER_URL_ALLOW_NETWORKS or TAGGER_ALLOW_PRIVATE_URLS to allow)")
    return addresses[0]


def fetch_http(uri: str, *, max_bytes: int, timeout: float, allow_private: bool,
               allow_networks: Sequence[Network] = ()) -> bytes:
    """GET with the address check repeated on every redirect, timeouts and a byte cap."""
    # A server dripping one byte per read timeout would hold a decode thread for ever.
    deadline = time.monotonic() + 2 * timeout
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(uri)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ItemError("bad-uri", f"refusing to fetch {uri!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = check_address(parts.hostname, port, allow_private, allow_networks)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        response = _request(parts.scheme, parts.hostname, address, port, target, timeout)
        try:
            if response.status in {301, 302, 303, 307, 308}:
                uri = urljoin(uri, response.headers.get("Location", ""))
                continue
            return _read_http_body(response, uri, max_bytes, deadline)
        finally:
            response.release_conn()
    raise ItemError("bad-uri", f"more than {_MAX_REDIRECTS} redirects")


def _request(scheme: str, host: str, address: str, port: int, target: str,
             timeout: float) -> urllib3.BaseHTTPResponse:
    # Connect to the address that was checked, not to a second DNS answer (rebinding).
    pool_cls = urllib3.HTTPSConnectionPool if scheme == "https" else urllib3.HTTPConnectionPool
    extra = {"server_hostname": host, "assert_hostname": host} if scheme == "https" else {}
    pool = pool_cls(address, port, timeout=urllib3.Timeout(connect=timeout, read=timeout),
                    retries=False, maxsize=1, **extra)
    try:
        return pool.urlopen("GET", target, headers={"Host": host, "User-Agent": "catalog-tagger"},
                            redirect=False, preload_content=False)
    except urllib3.exceptions.SSLError as exc:
        raise ItemError("tls-error", f"GET {host}{target}: {exc}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # timeouts, resets, refused
        raise TransientError(f"GET {host}{target}: {exc}") from exc


def _read_http_body(response: urllib3.BaseHTTPResponse, uri: str, max_bytes: int,
                    deadline: float) -> bytes:
    if response.status in {404, 410}:
        raise ItemError("not-found", f"HTTP {response.status} for {uri}")
    if response.status in {401, 403}:
        raise ItemError("forbidden", f"HTTP {response.status} for {uri}")
    if response.status == 429 or response.status >= 500:
        raise TransientError(f"HTTP {response.status} for {uri}")
    if response.status != 200:
        raise ItemError("http-error", f"HTTP {response.status} for {uri}")
    declared = int(response.headers.get("Content-Length") or 0)
    if declared > max_bytes:
        raise ItemError("too-large", f"{uri} is {declared} bytes, over the cap of {max_bytes}")
    chunks, total = [], 0
    try:
        # read1 returns what one socket read brings, so the deadline is checked between reads.
        while chunk := response.read1(64 * 1024):
            total += len(chunk)
            if total > max_bytes:
                raise ItemError("too-large", f"{uri} is over the cap of {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise TransientError(f"reading {uri}: download ran over its time limit")
            chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(f"reading {uri}: {exc}") from exc
    return b"".join(chunks)
