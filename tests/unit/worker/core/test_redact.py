"""Secrets out of text: URL passwords and signed-URL parameters are masked, the rest kept."""

from __future__ import annotations

import pytest

from worker.core.redact import MASK, redact, stored_uri


@pytest.mark.parametrize(("text", "secret", "kept"), [
    ("redis://:s3cret@redis:6379/0", "s3cret", "redis:6379/0"),
    ("postgresql://tagger:s3cret@db:5432/tagger", "s3cret", "tagger:***@db:5432/tagger"),
    ("could not connect to postgresql+psycopg2://u:p%40ss@db/x: refused", "p%40ss",
     "refused"),
    ("https://user:hunter2@img.example.com/a.jpg", "hunter2", "user:***@img.example.com"),
])
def test_userinfo_passwords(text: str, secret: str, kept: str):
    out = redact(text)
    assert secret not in out and kept in out and MASK in out


def test_aws_presigned_url():
    url = ("https://bucket.s3.amazonaws.com/p/1.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKIAEXAMPLE%2F20261123%2Fus-east-1%2Fs3%2Faws4_request"
           "&X-Amz-Date=20261123T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
           "&X-Amz-Security-Token=FwoGZXIvYXdzEJr&X-Amz-Signature=0123456789abcdef")
    out = redact(url)
    for secret in ("AKIAEXAMPLE", "FwoGZXIvYXdzEJr", "0123456789abcdef"):
        assert secret not in out
    assert "X-Amz-Signature=***" in out and "X-Amz-Credential=***" in out
    assert "X-Amz-Security-Token=***" in out
    assert "X-Amz-Expires=3600" in out and "X-Amz-Date=20261123T000000Z" in out
    assert out.startswith("https://bucket.s3.amazonaws.com/p/1.jpg?")


def test_azure_sas_and_gcs_signed_urls():
    azure = ("https://acct.blob.core.windows.net/c/1.jpg?sv=2022-11-02&se=2026-12-01"
             "&sr=b&sp=r&sig=AbCdEf%2Bsecret%3D")
    out = redact(azure)
    assert "AbCdEf" not in out and "sig=***" in out and "sv=2022-11-02" in out
    gcs = ("https://storage.googleapis.com/b/1.jpg?X-Goog-Algorithm=GOOG4-RSA-SHA256"
           "&X-Goog-Credential=svc%40proj.iam&X-Goog-Signature=deadbeefcafe&X-Goog-Expires=900")
    out = redact(gcs)
    assert "deadbeefcafe" not in out and "svc%40proj" not in out
    assert "X-Goog-Signature=***" in out and "X-Goog-Expires=900" in out


@pytest.mark.parametrize("name", ["token", "access_token", "api_key", "Key-Pair-Id", "Policy",
                                  "password", "pwd", "auth"])
def test_other_secret_parameters(name: str):
    out = redact(f"https://cdn.example.com/a.jpg?w=1&{name}=topsecret")
    assert "topsecret" not in out and f"{name}=***" in out


@pytest.mark.parametrize("text", [
    "https://img.example.com/a.jpg?w=200&h=100&format=webp",
    "s3://bucket/商品/台灯 1.jpg",
    "/data/images/a=b.jpg",
    "no URL here, just a sentence with key words like signature",
    "https://img.example.com/p/a.jpg#frag",
])
def test_harmless_text_is_kept(text: str):
    assert redact(text) == text


def test_several_urls_in_one_message():
    text = ("GET https://a.example/x.jpg?sig=first-secret failed; retried "
            "https://u:second-secret@b.example/y.jpg?size=3")
    out = redact(text)
    assert "first-secret" not in out and "second-secret" not in out
    assert "size=3" in out and "https://a.example/x.jpg?sig=***" in out


@pytest.mark.parametrize(("text", "shown"), [
    # the userinfo ends at the authority's last @
    ("https://user:p@ssX@img.example.com/a.jpg", "https://user:***@img.example.com/a.jpg"),
    # a user name alone is the credential (a token)
    ("https://ghp_T0KEN@img.example.com/a.jpg", "https://***@img.example.com/a.jpg"),
    ("fetching https://ghp_T0KEN@h.example/a.jpg failed", "fetching https://***@h.example/a.jpg"),
    # percent-encoded names are the same names
    ("https://h.example/a.jpg?X%2DAmz%2DSignature=c0ffee&w=1",
     "https://h.example/a.jpg?X%2DAmz%2DSignature=***&w=1"),
    ("https://h.example/a.jpg?%73ig=c0ffee", "https://h.example/a.jpg?%73ig=***"),
    # a signed URL inside a parameter, and an OAuth fragment
    ("https://h.example/r?next=https%3A%2F%2Fcdn.example%2Fa.jpg%3Fsig%3Dc0ffee",
     "https://h.example/r?next=https://cdn.example/a.jpg%3Fsig%3D***"),
    ("https://h.example/a.jpg#access_token=c0ffee", "https://h.example/a.jpg#access_token=***"),
])
def test_every_spelling_of_a_secret_is_masked(text: str, shown: str):
    out = redact(text)
    assert "c0ffee" not in out and "p@ssX" not in out and "T0KEN" not in out
    assert out.startswith(shown) or shown in out, out


def test_text_around_urls_is_not_taken_for_userinfo():
    text = '{"uri": "https://img.example.com/a.jpg", "by": "ops@example.com"}'
    assert redact(text) == text


SIGNED_TONIGHT = ("https://bucket.s3.amazonaws.com/p/1.jpg?w=200&X-Amz-Algorithm=AWS4-HMAC-SHA256"
                  "&X-Amz-Credential=AKIA%2F20261123%2Fs3&X-Amz-Date=20261123T000000Z"
                  "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=0123abcd&x-id=Get")


@pytest.mark.parametrize(("uri", "stored"), [
    (SIGNED_TONIGHT, "https://bucket.s3.amazonaws.com/p/1.jpg?w=200&x-id=Get"),
    (SIGNED_TONIGHT.replace("20261123", "20261124").replace("0123abcd", "4567ef01"),
     "https://bucket.s3.amazonaws.com/p/1.jpg?w=200&x-id=Get"),
    ("https://acct.blob.core.windows.net/c/1.jpg?sv=2022-11-02&se=2026-12-01&sr=b&sp=r"
     "&sig=AbC%2B%3D", "https://acct.blob.core.windows.net/c/1.jpg"),
    ("https://d1.cloudfront.net/1.jpg?Expires=1700000000&Signature=abc~&Key-Pair-Id=K2J",
     "https://d1.cloudfront.net/1.jpg"),
    ("https://cos.example.myqcloud.com/1.jpg?q-sign-algorithm=sha1&q-ak=AKID&q-sign-time=1%3B2"
     "&q-key-time=1%3B2&q-header-list=&q-url-param-list=&q-signature=f00",
     "https://cos.example.myqcloud.com/1.jpg"),
    ("https://h.example/a.jpg?X%2DAmz%2DDate=1&X%2DAmz%2DSignature=2", "https://h.example/a.jpg"),
    ("https://user:p@ss@img.example.com/a.jpg?w=1", "https://img.example.com/a.jpg?w=1"),
    ("https://T0KEN@img.example.com/a.jpg", "https://img.example.com/a.jpg"),
    ("https://img.example.com/a.jpg?w=1#access_token=x", "https://img.example.com/a.jpg?w=1"),
    # a URL inside a parameter, percent-encoded once or twice, or not at all, is stored in its
    # own stored form (before, password and signature were stored as they came)
    ("https://h.example/i.png?redirect=https%3A%2F%2Fu%3APASSWORD%40cdn.example%2Fa.jpg%3Fw%3D1"
     "%26sig%3DSECRET&w=2",
     "https://h.example/i.png?redirect=https%3A%2F%2Fcdn.example%2Fa.jpg%3Fw%3D1&w=2"),
    ("https://h.example/r?next=https%253A%252F%252Fu%253APASSWORD%2540cdn.example%252Fa.jpg",
     "https://h.example/r?next=https%3A%2F%2Fcdn.example%2Fa.jpg"),
    ("https://h.example/r?next=https://u:PASSWORD@cdn.example/a.jpg&x=1",
     "https://h.example/r?next=https://cdn.example/a.jpg&x=1"),
    # nothing secret: kept exactly as written
    ("HTTPS://Img.Example.com/a.jpg?", "HTTPS://Img.Example.com/a.jpg?"),
    ("https://img.example.com/a.jpg?se=1&sp=r", "https://img.example.com/a.jpg?se=1&sp=r"),
    ("s3://bucket/商品/台灯 1.jpg", "s3://bucket/商品/台灯 1.jpg"),
    ("file:///data/a%20b@2x.jpg", "file:///data/a%20b@2x.jpg"),
    ("/data/images/a=b.jpg", "/data/images/a=b.jpg"),
])
def test_stored_uris_keep_what_identifies_the_image(uri: str, stored: str):
    assert stored_uri(uri) == stored
    assert stored_uri(stored) == stored
    assert "PASSWORD" not in redact(uri) and "SECRET" not in redact(uri)
