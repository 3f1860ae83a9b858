"""http(s):// images: a guarded GET (public addresses only, every redirect checked, capped)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import urllib3

from worker.core.errors import ItemError, Reason, SourceError, TransientError
from worker.core.redact import redact
from worker.core.settings import Network, Settings
from worker.sources import Budget, Listed, Source, read_capped

MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use, like 10.0.0.0/8
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def embedded_ipv4(ip: IP) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for: IPv4-mapped (``::ffff:a.b.c.d``),
    IPv4-compatible (``::a.b.c.d``), SIIT (``::ffff:0:a.b.c.d``), NAT64, 6to4 and Teredo.

    A translator or tunnel on the way delivers such an address to its IPv4 one.
    """
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = []
    if int(ip) >> 32 in {0, 0xFFFF, 0xFFFF_0000} or ip in NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF))
    if ip.sixtofour:
        found.append(ip.sixtofour)
    if ip.teredo:
        found.extend(ip.teredo)
    return found


def is_allowed(ip: IP, allow_networks: Sequence[Network] = ()) -> bool:
    """A public address, or one inside an allowed network; an IPv6 form of IPv4 addresses is
    judged by every IPv4 address inside it."""
    if any(ip in net for net in allow_networks):
        return True
    if ip in LOCAL_NAT64:
        return False
    inner = embedded_ipv4(ip)
    if inner:
        return all(is_allowed(v4, allow_networks) for v4 in inner)
    return ip.is_global


def check_address(host: str, port: int, allow_private: bool,
                  allow_networks: Sequence[Network] = ()) -> str:
    """Resolve ``host`` and return an address it may be fetched from, refusing internal ones."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ItemError(Reason.NOT_FOUND, f"cannot resolve {host}: {exc}") from exc
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not (allow_private or is_allowed(ip, allow_networks)):
            inner = ", ".join(map(str, embedded_ipv4(ip)))
            raise ItemError(Reason.BLOCKED_ADDRESS,
                            f"{host} resolves to {ip}{f' (IPv4 {inner})' if inner else ''}, a "
                            "non-public address (set TAGGER_URL_ALLOW_NETWORKS or "
                            "TAGGER_ALLOW_PRIVATE_URLS to allow)")
    return str(addresses[0])


def ascii_host(host: str) -> str:
    """The host as DNS, TLS and the Host header spell it (IDNA for a non-ASCII name)."""
    try:
        return host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ItemError(Reason.BAD_URI, f"bad host name {host!r}: {exc}") from exc


def host_header(scheme: str, host: str, port: int) -> str:
    """``host``, ``host:port`` off the scheme's default port; IPv6 literals in brackets."""
    name = f"[{host}]" if ":" in host else host
    return name if port == DEFAULT_PORTS[scheme] else f"{name}:{port}"


class HttpSource(Source):
    """``http://`` and ``https://`` URLs (fetch only: there is nothing to list)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.max_bytes = settings.max_image_bytes
        self.timeout = settings.fetch_timeout
        self.allow_private = settings.allow_private_urls
        self.allow_networks = settings.url_allow_networks

    def listing(self, location: str, **_: Any) -> Iterator[Listed]:
        raise SourceError(f"cannot list {redact(location)}: list a bucket (s3://), a folder "
                          "or a catalogue database whose rows hold http(s):// URLs")

    def check(self, uri: str, budget: Budget) -> None:
        self._hop(uri)

    def _hop(self, uri: str) -> tuple[SplitResult, str, int, str]:
        """The URL's parts, host, port and the address it may be fetched from: refused when
        it is not http(s) or resolves to a non-public address (checked on every redirect)."""
        parts = urlsplit(uri)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ItemError(Reason.BAD_URI, f"refusing to fetch {redact(uri)!r}")
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        host = ascii_host(parts.hostname)
        return parts, host, port, check_address(host, port, self.allow_private,
                                                self.allow_networks)

    def fetch(self, uri: str, budget: Budget) -> bytes:
        """GET with the address check repeated on every redirect, timeouts and a byte cap."""
        for _ in range(MAX_REDIRECTS + 1):
            parts, host, port, address = self._hop(uri)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            timeout = min(self.timeout, budget.left(uri))
            response = _request(parts.scheme, host, address, port, target, timeout)
            try:
                if response.status in {301, 302, 303, 307, 308}:
                    uri = urljoin(uri, response.headers.get("Location", ""))
                    continue
                return self._body(response, uri, budget)
            finally:
                response.release_conn()
        raise ItemError(Reason.BAD_URI, f"more than {MAX_REDIRECTS} redirects")

    def _body(self, response: urllib3.BaseHTTPResponse, uri: str, budget: Budget) -> bytes:
        shown = redact(uri)
        if response.status in {404, 410}:
            raise ItemError(Reason.NOT_FOUND, f"HTTP {response.status} for {shown}")
        if response.status in {401, 403}:
            raise ItemError(Reason.FORBIDDEN, f"HTTP {response.status} for {shown}")
        if response.status == 429 or response.status >= 500:
            raise TransientError(f"HTTP {response.status} for {shown}")
        if response.status != 200:
            raise ItemError(Reason.HTTP_ERROR, f"HTTP {response.status} for {shown}")
        declared = int(response.headers.get("Content-Length") or 0)
        try:
            # read1 returns what one socket read brings, so the deadline is checked between reads.
            return read_capped(response.read1, shown, self.max_bytes, budget, declared)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"reading {shown}: {exc}") from exc


def _request(scheme: str, host: str, address: str, port: int, target: str,
             timeout: float) -> urllib3.BaseHTTPResponse:
    # Connect to the address that was checked, not to a second DNS answer (rebinding).
    pool_cls = urllib3.HTTPSConnectionPool if scheme == "https" else urllib3.HTTPConnectionPool
    extra = {"server_hostname": host, "assert_hostname": host} if scheme == "https" else {}
    pool = pool_cls(address, port, timeout=urllib3.Timeout(connect=timeout, read=timeout),
                    retries=False, maxsize=1, **extra)
    try:
        return pool.urlopen("GET", target, headers={"Host": host_header(scheme, host, port),
                                                    "User-Agent": "catalog-tagger"},
                            redirect=False, preload_content=False)
    except urllib3.exceptions.SSLError as exc:
        raise ItemError(Reason.TLS_ERROR, f"GET {host}: {exc}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # timeouts, resets, refused
        raise TransientError(f"GET {host}: {exc}") from exc
