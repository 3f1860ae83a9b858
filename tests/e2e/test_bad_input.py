"""Bad input in a real worker: one chunk of hostile and odd images next to good ones."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from testkit.commands import producer, rows, send
from testkit.images import image_bytes, png_bomb, save
from testkit.processes import descendants, peak_rss_kib
from testkit.services import wait_until

pytestmark = pytest.mark.timeout(240)
BYTE_CAP = 300_000


def odd_but_valid() -> dict[str, bytes]:
    """Images that must be tagged: unusual modes, formats, sizes and names."""
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    exif = Image.Exif()
    exif[0x0112] = 6
    sixteen = Image.fromarray(np.random.default_rng(9).integers(0, 65536, (30, 40), np.uint16))
    return {
        "good.png": image_bytes(1), "good.jpg": image_bytes(2, fmt="JPEG"),
        "商品 图片/红色 鞋子 #1.png": image_bytes(3),
        "cmyk.jpg": image_bytes(4, mode="CMYK", fmt="JPEG"),
        "sixteen-bit.png": save(sixteen, "PNG"),
        "palette.png": save(palette, "PNG", transparency=0),
        "animated.gif": save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "animated.webp": save(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                              lossless=True),
        "rotated.jpg": save(Image.new("RGB", (64, 32), (9, 99, 199)), "JPEG", exif=exif),
        "gray.png": image_bytes(5, mode="L"),
        "one-pixel.png": save(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"),
    }


def bad() -> dict[str, tuple[bytes, str]]:
    """Files that must fail, each with the reason it must be stored with."""
    jpeg = image_bytes(6, size=(64, 64), fmt="JPEG")
    return {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "undecodable"),
        "text.jpg": ("只是一段文字\n".encode(), "undecodable"),
        "bomb.png": (png_bomb(10_000, 10_000), "too-many-pixels"),
        "over-cap.png": (b"\x89PNG" + b"\0" * (BYTE_CAP + 10), "too-large"),
        "portable.ppm": (image_bytes(7, fmt="PPM"), "undecodable"),
    }


def peak_mib(pids: list[int]) -> dict[int, float]:
    """The peak RSS of each live process in ``pids``."""
    peaks = {}
    for pid in pids:
        with contextlib.suppress(OSError, LookupError):
            peaks[pid] = peak_rss_kib(pid) / 1024
    return peaks


def test_bad_input_chunk_and_retry_failed(tagger_env, bucket, start_worker, tmp_path,
                                          monkeypatch):
    monkeypatch.setenv("TAGGER_MAX_IMAGE_BYTES", str(BYTE_CAP))
    env = {**tagger_env, "TAGGER_MAX_IMAGE_BYTES": str(BYTE_CAP)}
    folder = tmp_path / "images"
    good_uris, expected = [], {}
    for name, data in odd_but_valid().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        good_uris.append(str(folder / name))  # plain paths: the run's folder is its file root
    for name, (data, reason) in bad().items():
        (folder / name).write_bytes(data)
        expected[str(folder / name)] = reason
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="商品/红色 鞋子.png", Body=image_bytes(8))
    good_uris.append(f"s3://{bucket}/商品/红色 鞋子.png")
    late_file = folder / "arrives-later.png"
    late_key = f"s3://{bucket}/arrives/later.png"
    expected |= {str(late_file): "not-found", late_key: "not-found"}

    worker = start_worker(env)
    child = worker.model_pid()
    url = env["DATABASE_URL"]
    # A first chunk of good images (local and S3) brings the processes to their working size.
    send([good_uris[0], good_uris[-1]], file_roots=[folder])
    wait_until(lambda: len(rows(url)) == 2, 60, message="the warm-up chunk did not finish")
    before = peak_mib([child, *descendants(child)])  # the model process and its decoders
    send(good_uris[1:-1] + list(expected), chunk_size=64, file_roots=[folder])
    wait_until(lambda: len(rows(url)) == len(good_uris) + len(expected), 90,
               message="the chunk did not finish")

    found = rows(url)
    for uri in good_uris:
        assert found[uri].status == "done", (uri, found[uri].error)
        assert len(found[uri].labels) == 5
    for uri, reason in expected.items():
        row = found[uri]
        assert (row.status, row.reason) == ("failed", reason), (uri, row.error)
        assert row.error and row.labels == []
    # The bomb was refused before its pixels were allocated (it would take 100 MB to 400 MB),
    # in the model process and in every decoder process alike.
    assert worker.model_pid() == child, "a bad image killed the worker child"
    after = peak_mib([child, *descendants(child)])
    assert set(after) == set(before), "a decoder process was replaced: a bad image killed it"
    grown = {pid: after[pid] - before[pid] for pid in before}
    assert max(grown.values()) < 64, f"peak memory grew by {grown} MiB"
    print(f"peak RSS (MiB) before {before}, growth {grown}")

    status = json.loads(producer("status", "--json"))
    assert status["failed_by_reason"] == {"empty": 1, "undecodable": 3, "too-many-pixels": 1,
                                          "too-large": 1, "not-found": 2}
    # The missing images arrive; retrying only that reason tags them and replaces the failures.
    late_file.write_bytes(image_bytes(10))
    s3.put_object(Bucket=bucket, Key="arrives/later.png", Body=image_bytes(11))
    assert "re-enqueued 2 failed images" in producer("retry-failed", "--reason", "not-found")
    wait_until(lambda: all(rows(url)[u].status == "done" for u in (str(late_file), late_key)),
               60, message="retried images were not tagged")
    after_retry = rows(url)
    assert len(after_retry) == len(found)  # replaced, not added
    for uri in (str(late_file), late_key):
        assert after_retry[uri].reason is None and after_retry[uri].error is None
        assert after_retry[uri].updated_at > found[uri].updated_at
    assert after_retry[str(folder / "empty.jpg")].status == "failed"  # other reasons left alone
    status = json.loads(producer("status", "--json"))
    assert "not-found" not in status["failed_by_reason"]
    assert status["failed"] == 6 and status["done"] == len(good_uris) + 2


@pytest.mark.parametrize(("content", "message"), [
    ("# only a comment\n\n   \n", "has no labels"),
    ("台灯\n" + "长" * 49 + "\n", "over the limit of 48"),
], ids=["empty", "over-long"])
def test_worker_refuses_to_start_with_a_bad_label_set(tagger_env, start_worker, tmp_path,
                                                      content, message):
    labels: Path = tmp_path / "labels.txt"
    labels.write_text(content, encoding="utf-8")
    with pytest.raises(RuntimeError, match="worker exited with 1") as info:
        start_worker({**tagger_env, "TAGGER_LABELS": str(labels)}, ready_timeout=60)
    assert "refusing to start" in str(info.value) and message in str(info.value)
