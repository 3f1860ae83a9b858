"""S3 (and compatible stores): list a bucket prefix, get an object; boto3's own configuration."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import urllib3
from botocore.config import Config

from worker.core.contract import Item
from worker.core.errors import (
    ItemError,
    Reason,
    Skip,
    SourceError,
    TaggerError,
    TransientError,
)
from worker.core.settings import Settings
from worker.sources import Budget, Listed, Skipped, Source, is_image_name, read_capped

CHUNK = 256 * 1024
RETRIES = 5  # the first try and five more, with backoff, as boto3's standard mode
AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn")
STATUS = re.compile(r"status code: (\d{3})")
CODE = re.compile(r"<Code>([^<]{1,64})</Code>")  # in the S3 error document obstore quotes
# botocore's own check: a name S3 could never have is refused before any request.
BUCKET_NAME = re.compile(r"[A-Za-z0-9.\-_]{1,255}")
# S3 answers that mean "this object will not be readable by retrying", by error code; any other
# 4xx answer is permanent too (as http-error), except for these codes, which pass.
_PERMANENT = {"NoSuchKey": Reason.NOT_FOUND, "404": Reason.NOT_FOUND,
              "NotFound": Reason.NOT_FOUND, "NoSuchBucket": Reason.NOT_FOUND,
              "AccessDenied": Reason.FORBIDDEN, "403": Reason.FORBIDDEN,
              "InvalidObjectState": Reason.FORBIDDEN, "InvalidBucketName": Reason.BAD_URI,
              "KeyTooLongError": Reason.BAD_URI, "InvalidURI": Reason.BAD_URI,
              "InvalidArgument": Reason.BAD_URI, "InvalidAccessKeyId": Reason.CREDENTIALS,
              "SignatureDoesNotMatch": Reason.CREDENTIALS, "InvalidToken": Reason.CREDENTIALS}
_PASSING = ("RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "Throttling",
            "ThrottlingException", "TooManyRequests", "RequestLimitExceeded", "ExpiredToken",
            "TokenRefreshRequired", "OperationAborted", "InternalError", "ServiceUnavailable")
# boto3 errors raised before or instead of an answer that a retry can clear: the network, and
# credentials fetched from a service that may be back. No credentials at all is the workers'
# configuration (NO_CREDENTIALS); any other (a key boto3 will not send, an unusable region or
# endpoint) fails the image at once.
NO_CREDENTIALS = (botocore.exceptions.NoCredentialsError,
                  botocore.exceptions.PartialCredentialsError)
_UNREACHABLE = (urllib3.exceptions.HTTPError, OSError, botocore.exceptions.ConnectionError,
                botocore.exceptions.HTTPClientError, botocore.exceptions.IncompleteReadError,
                botocore.exceptions.ResponseStreamingError, botocore.exceptions.ChecksumError,
                botocore.exceptions.CredentialRetrievalError,
                botocore.exceptions.MetadataRetrievalError)


@functools.cache
def client(timeout: float, pool: int) -> Any:
    """One S3 client per process (clients are thread-safe); credentials from boto3's sources."""
    config = Config(retries={"mode": "standard", "max_attempts": 5},
                    connect_timeout=timeout, read_timeout=timeout, max_pool_connections=pool)
    return boto3.session.Session().client("s3", config=config)


def split(uri: str) -> tuple[str, str]:
    # Not urlsplit: a key is raw text, and '?' or '#' in it are part of the key.
    bucket, _, key = uri.partition("://")[2].partition("/")
    return bucket, key


class S3Source(Source):
    """``s3://bucket/key``."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.max_bytes = settings.max_image_bytes
        self.timeout = min(settings.fetch_timeout, settings.item_timeout)
        self.client = client(self.timeout, 4)

    def listing(self, location: str, **_: Any) -> Iterator[Listed]:
        """Every object under the prefix, page by page, with its ETag as the version."""
        bucket, prefix = split(location)
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"]
                    if is_image_name(key):
                        yield Item(uri=f"s3://{bucket}/{key}",
                                   version=obj.get("ETag", "").strip('"'))
                    else:
                        yield Skipped(Skip.NOT_IMAGE, key)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            raise SourceError(f"cannot list s3://{bucket}/{prefix}: "
                              f"{error.get('Code', 'error')}: {error.get('Message', exc)}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise SourceError(f"cannot list s3://{bucket}/{prefix}: {exc}") from exc

    def check(self, uri: str, budget: Budget) -> None:
        self._object(uri)

    @staticmethod
    def _object(uri: str) -> tuple[str, str]:
        bucket, key = split(uri)
        if not bucket or not key:
            raise ItemError(Reason.BAD_URI, f"not an s3://bucket/key URI: {uri}")
        if not BUCKET_NAME.fullmatch(bucket):
            raise ItemError(Reason.BAD_URI, f"{bucket!r} is not a valid S3 bucket name")
        return bucket, key

    def fetch(self, uri: str, budget: Budget) -> bytes:
        """The object's bytes through obstore (its GETs run outside the interpreter, ~1 ms of
        CPU against boto3's ~4); keys obstore cannot spell go through boto3."""
        bucket, key = self._object(uri)
        budget.left(uri)
        import obstore

        try:
            result = obstore.get(_store(bucket, self.timeout), key)
            return read_capped(_Reader(result.stream(CHUNK)).read, uri, self.max_bytes, budget,
                               int(result.meta["size"]))
        except ValueError:  # "Could not parse path": obstore refuses keys S3 allows ("a//b")
            return self._fetch_with_boto3(uri, bucket, key, budget)
        except (ItemError, TransientError):
            raise
        except Exception as exc:
            raise _failure(exc, uri) from exc

    def _fetch_with_boto3(self, uri: str, bucket: str, key: str, budget: Budget) -> bytes:
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            with body:
                return read_capped(body.read, uri, self.max_bytes, budget,
                                   response.get("ContentLength") or 0)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            raise _meaning(code, status, uri, str(exc)) from exc
        except NO_CREDENTIALS as exc:
            raise credentials_error(uri, str(exc)) from exc
        except _UNREACHABLE as exc:
            raise TransientError(f"S3 unreachable for {uri}: {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ItemError(Reason.BAD_URI, f"S3 cannot ask for {uri}: {exc}") from exc


class _Reader:
    """obstore's chunk stream as the ``read(n)`` that ``read_capped`` takes."""

    def __init__(self, chunks: Iterator[Any]) -> None:
        self.chunks = chunks

    def read(self, _size: int) -> bytes:
        return bytes(next(self.chunks, b""))


@functools.cache
def _store(bucket: str, timeout: float) -> Any:
    """One obstore client per bucket and process, configured as boto3 resolves S3 (endpoint,
    region, credentials from the environment, profiles or instance roles)."""
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    session = boto3.session.Session()
    resolved = session.client("s3").meta
    options: dict[str, Any] = {"region": resolved.region_name or "us-east-1"}
    endpoint = resolved.endpoint_url or ""
    if not urlsplit(endpoint).hostname or not urlsplit(endpoint).hostname.endswith(AWS_HOSTS):
        options["endpoint"] = endpoint  # an S3-compatible store (MinIO, Ceph, a test server)
    return S3Store(
        bucket, **options, credential_provider=Boto3CredentialProvider(session),
        client_options={"allow_http": endpoint.startswith("http://"),
                        "timeout": timedelta(seconds=timeout),
                        "connect_timeout": timedelta(seconds=timeout)},
        retry_config={"max_retries": RETRIES, "retry_timeout": timedelta(seconds=2 * timeout),
                      "backoff": {"init_backoff": timedelta(milliseconds=100),
                                  "max_backoff": timedelta(seconds=2), "base": 2}})


def _failure(exc: Exception, uri: str) -> TaggerError:
    """obstore's error as ours: a missing or forbidden object (or any 4xx answer but a
    throttle) is the item's failure; the rest (5xx after retries, timeouts) is transient."""
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    found, status = CODE.search(str(exc)), STATUS.search(str(exc))
    code = found.group(1) if found else ""
    if isinstance(exc, NO_CREDENTIALS) or "Unable to locate credentials" in str(exc) or (
            _PERMANENT.get(code) == Reason.CREDENTIALS):
        return credentials_error(uri, code or text[:300])
    if isinstance(exc, FileNotFoundError | NotFoundError):
        return ItemError(Reason.NOT_FOUND, f"S3 NoSuchKey: {uri}")
    if (isinstance(exc, PermissionError | PermissionDeniedError | UnauthenticatedError)
            and code not in _PASSING):  # not a skewed clock or an expired token
        return ItemError(Reason.FORBIDDEN, f"S3 AccessDenied: {uri}")
    return _meaning(code, int(status.group(1)) if status else 0, uri, text[:300])


def credentials_error(uri: str, detail: str) -> ItemError:
    """Missing or refused credentials: no image of S3 can be read until the workers get
    others, so no retry (each image fails at once), and the message says what to do."""
    return ItemError(Reason.CREDENTIALS, f"S3 credentials missing or refused ({detail}) for "
                     f"{uri}: give the workers AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                     "AWS_PROFILE, or a role), then `producer retry-failed --reason credentials`")


def _meaning(code: str, status: int, uri: str, detail: str) -> TaggerError:
    """What an S3 error answer means for one object: failed for good (a missing or forbidden
    object, any 3xx or 4xx answer but a throttle or a timeout), or worth a retry."""
    if _PERMANENT.get(code) == Reason.CREDENTIALS:
        return credentials_error(uri, code)
    if code in _PERMANENT:
        return ItemError(_PERMANENT[code], f"S3 {code}: {uri}")
    if code not in _PASSING and 300 <= status < 500 and status not in (408, 429):
        reason = {403: Reason.FORBIDDEN, 404: Reason.NOT_FOUND}.get(status, Reason.HTTP_ERROR)
        return ItemError(reason, f"S3 answered {code or status} for {uri}: {detail}")
    return TransientError(f"S3 {code or status or 'error'} for {uri}: {detail}")
