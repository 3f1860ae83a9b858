"""Real servers that misbehave on purpose: slow, dripping or redirecting HTTP; an S3 fault proxy."""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


@dataclass
class Reply:
    """What the test server answers for one path."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before the status line (a slow origin)
    drip: float = 0.0  # seconds between body bytes (slowloris), 0 = all at once
    length: bool = True  # send Content-Length
    gate: threading.Event | None = None  # held until the test sets it (a fetch in progress)


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:  # keep test output clean
        pass


class _ImageHandler(_Quiet):
    server: _ImageHTTPServer

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.hits[self.path] += 1
            server.hosts.append(self.headers.get("Host", ""))
        reply = server.routes.get(self.path, server.fallback)
        server.started.set()
        if reply.gate is not None:
            reply.gate.wait(120)
        time.sleep(reply.delay)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.length:
            self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            if reply.drip:
                for i in range(len(reply.body)):
                    self.wfile.write(reply.body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(reply.drip)
            else:
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout, byte cap): that is the point of some tests


class _ImageHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _ImageHandler)
        self.routes: dict[str, Reply] = {}
        self.fallback = Reply(b"not found", status=404)  # for every path without a route
        self.hits: Counter[str] = Counter()
        self.hosts: list[str] = []  # the Host header of each request, in order
        self.lock = threading.Lock()
        self.started = threading.Event()


class _Serving:
    """A server in a thread of its own while the ``with`` block runs."""

    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self.httpd = httpd
        self.thread = threading.Thread(target=httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ImageServer(_Serving):
    """A threaded HTTP server on a loopback address serving canned replies per path."""

    httpd: _ImageHTTPServer

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(_ImageHTTPServer((host, 0)))
        self.host = host
        self.port = self.httpd.server_address[1]

    @property
    def routes(self) -> dict[str, Reply]:
        return self.httpd.routes

    @property
    def fallback(self) -> Reply:
        return self.httpd.fallback

    @fallback.setter
    def fallback(self, reply: Reply) -> None:
        self.httpd.fallback = reply

    @property
    def hits(self) -> Counter[str]:
        return self.httpd.hits

    @property
    def hosts(self) -> list[str]:
        return self.httpd.hosts

    @property
    def started(self) -> threading.Event:
        return self.httpd.started

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


class _ProxyHandler(_Quiet):
    server: _ProxyServer

    def _forward(self) -> None:
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with server.lock:
            server.seen[self.command] += 1
            fault = server.faults.pop(0) if self.command == "GET" and server.faults else None
        if fault is not None:
            if fault.gate is not None:
                fault.gate.wait(120)
            if fault.delay:
                time.sleep(fault.delay)
            self._answer(fault.status, fault.body)
            return
        upstream = http.client.HTTPConnection(server.upstream_host, server.upstream_port,
                                              timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in {"content-length", "connection", "transfer-encoding"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward


@dataclass
class Fault:
    """One injected S3 answer: an error status with an S3 error document, after a delay."""

    status: int
    code: str
    delay: float = 0.0
    gate: threading.Event | None = None  # held until the test sets it (an answer never sent)

    @property
    def body(self) -> bytes:
        return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{self.code}</Code>'
                f"<Message>injected {self.code}</Message><RequestId>fault</RequestId></Error>"
                ).encode()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream_host, self.upstream_port = host, int(port)
        self.faults: list[Fault] = []
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()


class FaultProxy(_Serving):
    """An HTTP proxy in front of moto's S3 server that answers the next GETs with faults."""

    httpd: _ProxyServer

    def __init__(self, upstream: str) -> None:
        super().__init__(_ProxyServer(upstream))
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def inject(self, count: int, status: int = 503, code: str = "SlowDown",
               delay: float = 0.0, gate: threading.Event | None = None) -> None:
        with self.httpd.lock:
            self.httpd.faults.extend(Fault(status, code, delay, gate) for _ in range(count))

    @property
    def gets(self) -> int:
        return self.httpd.seen["GET"]

    @property
    def faults_left(self) -> int:
        return len(self.httpd.faults)
