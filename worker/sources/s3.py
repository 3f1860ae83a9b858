"""S3 (and compatible stores): list a bucket prefix, get an object; boto3's own configuration."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import urllib3
from botocore.config import Config

from worker.core.contract import Item
from worker.core.errors import ItemError, Reason, Skip, SourceError, TransientError
from worker.core.settings import Settings
from worker.sources import Budget, Listed, Skipped, Source, is_image_name, read_capped

# S3 answers that mean "this object will not be readable by retrying", by error code; any other
# 4xx answer is permanent too (as http-error), except for these codes, which pass.
_PERMANENT = {"NoSuchKey": Reason.NOT_FOUND, "404": Reason.NOT_FOUND,
              "NotFound": Reason.NOT_FOUND, "NoSuchBucket": Reason.NOT_FOUND,
              "AccessDenied": Reason.FORBIDDEN, "403": Reason.FORBIDDEN,
              "InvalidObjectState": Reason.FORBIDDEN, "InvalidBucketName": Reason.BAD_URI,
              "KeyTooLongError": Reason.BAD_URI, "InvalidURI": Reason.BAD_URI,
              "InvalidArgument": Reason.BAD_URI}
_PASSING = {"RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "Throttling",
            "ThrottlingException", "TooManyRequests", "RequestLimitExceeded", "ExpiredToken",
            "TokenRefreshRequired", "OperationAborted", "InternalError", "ServiceUnavailable"}
# boto3 errors raised before or instead of an answer that a retry can clear: the network, and
# credentials fetched from a service that may be back. Any other (an invalid bucket name, a key
# boto3 will not send, an unusable region or endpoint) fails the image at once.
_UNREACHABLE = (urllib3.exceptions.HTTPError, OSError, botocore.exceptions.ConnectionError,
                botocore.exceptions.HTTPClientError, botocore.exceptions.IncompleteReadError,
                botocore.exceptions.ResponseStreamingError, botocore.exceptions.ChecksumError,
                botocore.exceptions.NoCredentialsError,
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
        self.client = client(min(settings.fetch_timeout, settings.item_timeout),
                             2 * settings.fetch_threads)

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

    def fetch(self, uri: str, budget: Budget) -> bytes:
        bucket, key = split(uri)
        if not bucket or not key:
            raise ItemError(Reason.BAD_URI, f"not an s3://bucket/key URI: {uri}")
        try:
            budget.left(uri)
            response = self.client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            with body:
                size = response.get("ContentLength") or 0
                if size > self.max_bytes:
                    raise ItemError(Reason.TOO_LARGE,
                                    f"object is {size} bytes, over the cap of {self.max_bytes}")
                return read_capped(body.read, uri, self.max_bytes, budget)
        except botocore.exceptions.ClientError as exc:
            raise answer_error(exc, uri) from exc
        except _UNREACHABLE as exc:
            raise TransientError(f"S3 unreachable for {uri}: {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ItemError(Reason.BAD_URI, f"S3 cannot ask for {uri}: {exc}") from exc


def answer_error(exc: botocore.exceptions.ClientError, uri: str) -> ItemError | TransientError:
    """What an S3 error answer means for one object: failed for good, or worth a retry."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _PERMANENT:
        return ItemError(_PERMANENT[code], f"S3 {code}: {uri}")
    if code not in _PASSING and 300 <= status < 500 and status not in (408, 429):
        return ItemError(Reason.HTTP_ERROR, f"S3 {code or status} for {uri}: {exc}")
    return TransientError(f"S3 {code or 'error'} for {uri}: {exc}")
