"""Test helpers: a tiny random Chinese CLIP, images, a Celery worker process, direct scoring."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TEST_LABELS = ["台灯", "家具", "桌子", "椅子", "猫", "狗"]


def build_tiny_model(path: Path) -> Path:
    """A random ChineseCLIP small enough for tests, saved like a hub checkpoint."""
    from benchmarks.checkpoint import build

    labels_dir = ROOT / "worker" / "labelsets"
    texts = [p.read_text(encoding="utf-8") for p in labels_dir.glob("*.txt")]
    return build(path, [*texts, *TEST_LABELS], tiny=True)


def image_bytes(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "PNG",
                mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array.squeeze() if channels == 1 else array, mode)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def direct_scores(model_dir: Path, labels: list[str], images: list[bytes]) -> list[dict]:
    """What the checkpoint says about each image, through transformers' own processor, fp32."""
    import torch
    from transformers import ChineseCLIPModel, ChineseCLIPProcessor

    model = ChineseCLIPModel.from_pretrained(model_dir).eval()
    processor = ChineseCLIPProcessor.from_pretrained(model_dir)
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    with torch.no_grad():
        px = processor(images=pil, return_tensors="pt")["pixel_values"]
        img = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
        tok = processor(text=labels, padding=True, return_tensors="pt")
        txt = model.text_projection(model.text_model(**tok).last_hidden_state[:, 0])
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        probs = (model.logit_scale.exp() * img @ txt.T).softmax(-1)
    return [dict(zip(labels, row.tolist(), strict=True)) for row in probs]


class WorkerProcess:
    """A real ``celery -A worker worker`` in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 1) -> None:
        self.env = env
        self.log_path = log_path
        self.concurrency = concurrency
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 120) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "prefork",
             "-c", str(self.concurrency), "--loglevel", "INFO", "-Q", self.env["TAGGER_QUEUE"],
             "-n", f"test-{os.getpid()}-{time.monotonic_ns()}@%h", "--without-gossip",
             "--without-mingle"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait_for_log("label set", ready_timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count and "ready" in self.log():
                return
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        raise TimeoutError(f"worker did not log {text!r} in {timeout}s:\n{self.log()[-5000:]}")

    def signal(self, sig: int, group: bool = True) -> None:
        assert self.proc is not None
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)


def producer(*args: str) -> str:
    """Run the ``producer`` command in-process; fail on a non-zero exit; return its stdout."""
    from click.testing import CliRunner

    from producer.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def wait_until(predicate, timeout: float, interval: float = 0.25, message: str = ""):
    """Poll ``predicate`` until it returns a truthy value; raise on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(message or f"condition not met in {timeout}s")
