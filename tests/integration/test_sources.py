"""Fetching against real servers: address guard, redirects, timeouts, byte cap, files, S3 faults."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import boto3
import pytest

from testkit.faults import FaultProxy, ImageServer, Reply
from testkit.images import image_bytes
from testkit.services import reset_s3_clients
from worker.core.errors import ConfigError, ItemError, SourceError, TransientError
from worker.core.settings import load_settings
from worker.sources import Budget, check_uri, source_for
from worker.sources.http import host_header, is_allowed

CAP = 1_000_000
LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.1/32"),)


def get(uri: str, *, max_bytes: int = CAP, timeout: int = 1, seconds: float = 30,
        allow_private: bool = False, allow_networks: Sequence[object] = (),
        roots: Sequence[Path] = ()) -> bytes:
    """What a fetch thread does: check the URI, then fetch it from its source on a budget."""
    settings = load_settings({"TAGGER_MAX_IMAGE_BYTES": str(max_bytes),
                              "TAGGER_FETCH_TIMEOUT": str(timeout),
                              "TAGGER_ALLOW_PRIVATE_URLS": "1" if allow_private else "0",
                              "TAGGER_URL_ALLOW_NETWORKS": ",".join(map(str, allow_networks))})
    check_uri(uri)
    budget = Budget(time.monotonic() + seconds, tuple(roots))
    return source_for(uri, settings).fetch(uri, budget)


def item_error(uri: str, **kwargs: object) -> ItemError:
    with pytest.raises(ItemError) as info:
        get(uri, **kwargs)  # type: ignore[arg-type]
    assert str(info.value)
    return info.value


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        srv.routes["/cat.png"] = Reply(image_bytes(1), headers={"Content-Type": "image/png"})
        yield srv


# --- the address guard ---------------------------------------------------------------------

def test_loopback_is_refused_unless_allowed(server):
    url = server.url("/cat.png")
    assert item_error(url).reason == "blocked-address"
    assert item_error(url.replace("127.0.0.1", "localhost")).reason == "blocked-address"
    # 2130706433 is 127.0.0.1 written as one number; resolvers accept it.
    assert item_error(url.replace("127.0.0.1", "2130706433")).reason == "blocked-address"
    assert server.hits["/cat.png"] == 0
    assert get(url, allow_private=True) == server.routes["/cat.png"].body
    assert get(url, allow_networks=LOOPBACK_ONLY) == server.routes["/cat.png"].body
    assert server.hits["/cat.png"] == 2


@pytest.mark.parametrize("host", [
    "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "[::1]", "[::ffff:127.0.0.1]", "[fd00::1]", "[fe80::1]", "[fd00:ec2::254]",
    # IPv6 spellings of IPv4 addresses: compatible, SIIT, NAT64, 6to4, Teredo, local NAT64
    "[::127.0.0.1]", "[::ffff:0:127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::1]",
    "[::ffff:0:a9fe:a9fe]", "[64:ff9b::10.1.2.3]", "[2002:a01:203::1]",
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]", "[64:ff9b:1::8.8.8.8]", "[::]"])
def test_internal_addresses_are_refused_before_connecting(host):
    # Refused before connecting: a connection tried would end as a TransientError (refused,
    # timed out), never as an ItemError naming the address.
    error = item_error(f"http://{host}:9/latest/meta-data/", timeout=1)
    assert error.reason == "blocked-address" and "non-public address" in str(error)


def test_ipv6_forms_are_judged_by_the_ipv4_address_inside():
    def allowed(address: str, *networks: str) -> bool:
        return is_allowed(ipaddress.ip_address(address),
                          tuple(ipaddress.ip_network(n) for n in networks))

    assert allowed("::ffff:8.8.8.8") and allowed("2002:808:808::1")
    assert allowed("64:ff9b::8.8.8.8") and allowed("2606:4700::1111")
    assert allowed("::ffff:127.0.0.1", "127.0.0.1/32")
    assert allowed("64:ff9b::7f00:1", "127.0.0.1/32")
    assert not allowed("64:ff9b::7f00:2", "127.0.0.1/32")


def test_the_host_header_carries_a_non_default_port(server):
    assert get(server.url("/cat.png"), allow_private=True) == server.routes["/cat.png"].body
    assert server.hosts == [f"127.0.0.1:{server.port}"]
    assert host_header("https", "::1", 443) == "[::1]"
    assert host_header("http", "::1", 8080) == "[::1]:8080"
    assert host_header("https", "img.example.com", 80) == "img.example.com:80"


def test_allowed_network_does_not_open_others(server):
    assert item_error(server.url("/cat.png"), allow_networks=(
        ipaddress.ip_network("10.0.0.0/8"),)).reason == "blocked-address"


def test_redirect_to_blocked_address_is_rechecked(server):
    with ImageServer(host="127.0.0.2") as internal:
        internal.routes["/secret"] = Reply(b"internal data")
        server.routes["/hop"] = Reply(status=302, headers={"Location": internal.url("/secret")})
        server.routes["/meta"] = Reply(status=301, headers={
            "Location": "http://169.254.169.254/latest/meta-data/iam/"})
        for path in ("/hop", "/meta"):
            error = item_error(server.url(path), allow_networks=LOOPBACK_ONLY)
            assert error.reason == "blocked-address", error
        assert server.hits["/hop"] == 1 and internal.hits["/secret"] == 0


def test_redirects_are_followed_and_bounded(server):
    server.routes["/moved"] = Reply(status=307, headers={"Location": "/cat.png"})
    server.routes["/loop"] = Reply(status=302, headers={"Location": "/loop"})
    assert get(server.url("/moved"), allow_private=True) == server.routes["/cat.png"].body
    assert item_error(server.url("/loop"), allow_private=True).reason == "bad-uri"
    assert server.hits["/loop"] == 6


@pytest.mark.parametrize("uri", ["ftp://example.com/a.jpg", "gopher://x/1", "http:///nohost"])
def test_other_schemes_are_refused(uri):
    assert item_error(uri).reason == "bad-uri"


@pytest.mark.parametrize("uri", [
    "https://img.example.com:99999/a.jpg",  # port out of range
    "https://img.example.com:http/a.jpg",  # not a number
    "https://[::1/a.jpg",  # an unclosed IPv6 literal
    "https://[not-an-ip]/a.jpg",
    "/data/a\0b.jpg",  # NUL: no file has it
    "s3://bucket/a\nb.jpg",
])
def test_malformed_uris_are_bad_uri_before_any_source(uri):
    with pytest.raises(ItemError) as info:
        check_uri(uri)
    assert info.value.reason == "bad-uri" and str(info.value).startswith("bad URI")


def test_unknown_scheme_has_no_source():
    with pytest.raises(ConfigError, match="no source for ftp://"):
        source_for("ftp://example.com/a.jpg", load_settings({}))
    with pytest.raises(SourceError, match="cannot list"):
        list(source_for("https://x.example/", load_settings({})).listing("https://x.example/"))


# --- timeouts and the byte cap -------------------------------------------------------------

def test_slow_server_times_out(server):
    # The server holds its answer until the fetch has given up: only the timeout can end it.
    held = threading.Event()
    server.routes["/slow"] = Reply(image_bytes(2), gate=held)
    try:
        with pytest.raises(TransientError, match="timed out"):
            get(server.url("/slow"), allow_private=True, timeout=1)
        assert server.hits["/slow"] == 1  # one request, not retried in place
    finally:
        held.set()


def test_dripping_server_hits_the_download_deadline(server):
    # One byte every 0.1 s never trips a per-read timeout; the whole download has a limit.
    # The body would take 1000 s: only the download's deadline (2 s) can end the fetch.
    server.routes["/drip"] = Reply(b"x" * 10_000, drip=0.1)
    with pytest.raises(TransientError, match="time limit"):
        get(server.url("/drip"), allow_private=True, timeout=1, seconds=2)


@pytest.mark.parametrize("declared", [True, False])
def test_byte_cap(server, declared):
    server.routes["/big"] = Reply(b"\0" * 300_000, length=declared)
    error = item_error(server.url("/big"), allow_private=True, max_bytes=100_000)
    assert error.reason == "too-large"
    assert get(server.url("/big"), allow_private=True, max_bytes=300_000) == b"\0" * 300_000


@pytest.mark.parametrize(("status", "reason"), [(404, "not-found"), (410, "not-found"),
                                                (403, "forbidden"), (401, "forbidden"),
                                                (418, "http-error")])
def test_http_errors_are_item_errors(server, status, reason):
    server.routes["/x"] = Reply(b"no", status=status)
    assert item_error(server.url("/x"), allow_private=True).reason == reason


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_http_overload_is_transient(server, status):
    server.routes["/x"] = Reply(b"busy", status=status)
    with pytest.raises(TransientError):
        get(server.url("/x"), allow_private=True)


def test_signed_url_is_redacted_in_errors(server):
    server.routes["/gone.jpg"] = Reply(b"no", status=404)
    error = item_error(server.url("/gone.jpg?X-Amz-Signature=deadbeef42&w=2"),
                       allow_private=True)
    assert "deadbeef42" not in str(error) and "X-Amz-Signature=***" in str(error)


# --- local files -----------------------------------------------------------------------------

@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = (tmp_path / "root").resolve()
    folder.mkdir()
    return folder


def test_local_names_with_spaces_and_chinese(root: Path):
    path = root / "商品 图片" / "红色 鞋子 #1.png"
    path.parent.mkdir()
    path.write_bytes(b"png bytes")
    assert get(str(path), roots=[root]) == b"png bytes"
    assert get(path.as_uri(), roots=[root]) == b"png bytes"
    assert item_error(str(path) + ".missing", roots=[root]).reason == "not-found"
    assert item_error(str(path), max_bytes=3, roots=[root]).reason == "too-large"


def test_files_outside_the_roots_are_refused_before_they_are_touched(root: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "real.jpg").write_bytes(b"secret")
    os.mkfifo(outside / "pipe.jpg")  # opened, it would block; touched, it would be not-a-file
    messages = set()
    for name in ("real.jpg", "missing.jpg", "pipe.jpg"):
        uri = str(outside / name)
        error = item_error(uri, roots=[root])
        assert error.reason == "outside-roots"
        messages.add(str(error).replace(uri, "URI"))
    assert len(messages) == 1  # the answer says nothing about what exists there
    assert item_error(str(outside / "real.jpg")).reason == "outside-roots"  # no roots at all
    assert item_error(str(root / ".." / "outside" / "real.jpg"),
                      roots=[root]).reason == "outside-roots"
    assert get(str(outside / "real.jpg"), roots=[root, outside]) == b"secret"


def test_a_link_out_of_the_root_is_refused(root: Path, tmp_path: Path):
    (tmp_path / "passwd.jpg").write_bytes(b"secret")
    (root / "inside.jpg").write_bytes(b"ok")
    (root / "escape.jpg").symlink_to(tmp_path / "passwd.jpg")
    (root / "alias.jpg").symlink_to(root / "inside.jpg")
    (root / "up").symlink_to(tmp_path, target_is_directory=True)
    assert item_error(str(root / "escape.jpg"), roots=[root]).reason == "outside-roots"
    assert item_error(str(root / "up" / "passwd.jpg"), roots=[root]).reason == "outside-roots"
    assert get(str(root / "alias.jpg"), roots=[root]) == b"ok"  # a link within the root is fine


@pytest.mark.timeout(20)
def test_a_fifo_named_like_an_image_does_not_block(root: Path):
    os.mkfifo(root / "a.jpg")  # opened for reading, it blocks until a writer comes: the mark's
    assert item_error(str(root / "a.jpg"), roots=[root]).reason == "not-a-file"  # 20 s catch it


def test_a_folder_or_a_path_through_a_file_is_an_item_error(root: Path):
    (root / "file.jpg").write_bytes(b"x")
    (root / "folder.jpg").mkdir()
    assert item_error(str(root / "file.jpg" / "x.jpg"), roots=[root]).reason == "not-a-file"
    assert item_error(str(root / "folder.jpg"), roots=[root]).reason == "not-a-file"


# --- S3 through a fault proxy in front of moto's server ------------------------------------

@pytest.fixture
def proxy(s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as fault_proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", fault_proxy.endpoint)
        reset_s3_clients()
        yield fault_proxy
    reset_s3_clients()


@pytest.fixture
def cat(bucket: str) -> str:
    boto3.client("s3").put_object(Bucket=bucket, Key="cat.png", Body=image_bytes(7))
    return f"s3://{bucket}/cat.png"


def test_s3_throttling_is_retried_with_backoff(proxy, cat):
    proxy.inject(2, 503, "SlowDown")
    assert get(cat) == image_bytes(7)
    assert proxy.gets == 3 and proxy.faults_left == 0


def test_s3_5xx_that_persists_is_transient(proxy, cat):
    proxy.inject(20, 500, "InternalError")
    with pytest.raises(TransientError, match="InternalError"):
        get(cat)
    assert proxy.gets == 6  # boto3 standard mode: the first try and 5 jittered retries


def test_s3_timeout_is_retried(proxy, cat):
    held = threading.Event()
    proxy.inject(1, 503, "SlowDown", gate=held)  # answered only after the test is over
    try:
        assert get(cat, timeout=1) == image_bytes(7)
        assert proxy.gets == 2  # the first answer is still held: retried without waiting for it
    finally:
        held.set()


def test_s3_missing_key_fails_at_once(proxy, bucket):
    error = item_error(f"s3://{bucket}/no/such.png")
    assert error.reason == "not-found"
    assert proxy.gets == 1  # no retry


def test_s3_forbidden_fails_at_once(proxy, cat):
    proxy.inject(1, 403, "AccessDenied")
    assert item_error(cat).reason == "forbidden"
    assert proxy.gets == 1


def test_s3_keys_with_spaces_chinese_and_url_characters(bucket):
    reset_s3_clients()
    s3 = boto3.client("s3")
    # "a//b" is a key obstore cannot spell: it goes through boto3.
    for key in ("商品/红色 鞋子.png", "a b/c?d#e.png", "100%/x+y.png", "a//b.png"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
        assert get(f"s3://{bucket}/{key}") == key.encode()


def test_s3_object_over_the_cap(bucket):
    reset_s3_clients()
    boto3.client("s3").put_object(Bucket=bucket, Key="big.png", Body=b"\0" * 2000)
    assert item_error(f"s3://{bucket}/big.png", max_bytes=1000).reason == "too-large"


def test_s3_uri_without_a_key(bucket):
    assert item_error(f"s3://{bucket}").reason == "bad-uri"


def test_an_impossible_bucket_name_fails_at_once(proxy):
    error = item_error("s3://RT_bad_bucket!/x.jpg")
    assert error.reason == "bad-uri" and "bucket name" in str(error)
    assert proxy.gets == 0


# --- a URI whose content is known is checked as its fetch would be ----------------------------

def test_check_refuses_what_a_fetch_refuses_and_reads_nothing(server, root: Path, tmp_path: Path):
    """Issue 25 item 2: an image scored from a kept embedding is not fetched, but its URI goes
    through the same checks as a fetch's, in the same order, from the source itself."""
    settings = load_settings({})
    budget = Budget(time.monotonic() + 30, (root,))
    (tmp_path / "secret.png").write_bytes(image_bytes(1))
    (root / "cat.png").write_bytes(image_bytes(2))
    refused = [server.url("/cat.png"), "http://169.254.169.254/latest/meta-data/",
               (tmp_path / "secret.png").as_uri(), "/etc/shadow", "s3://Bad_Bucket!/a.jpg",
               "postgresql://db/catalogue"]
    for uri in refused:
        source = source_for(uri, settings)
        with pytest.raises(ItemError) as checked:
            source.check(uri, budget)
        with pytest.raises(ItemError) as fetched:
            source.fetch(uri, budget)
        assert (checked.value.reason, str(checked.value)) == (
            fetched.value.reason, str(fetched.value)), uri
    assert not server.hits  # refused before any connection
    for uri in [(root / "cat.png").as_uri(), "s3://bucket/a.jpg"]:
        source_for(uri, settings).check(uri, budget)  # may be read: nothing is read
