"""The benchmark's steps in order, each timed by itself; the figures as one dict."""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu import e2e, measure, photos
from testkit.models import tiny_checkpoint
from worker.backends.torch_clip import TorchBackend
from worker.checkpoint import build
from worker.core.labels import load_labelset
from worker.core.settings import DEFAULT_LABELS, LABELSETS, Settings, load_settings
from worker.decoders import Limits
from worker.decoders.nvjpeg import NvJpegDecoder

# Sizes for a device window, and for a CPU run that only keeps the code from rotting.
ON_GPU = {"tower_seconds": 10.0, "decode_images": 4096, "agreement_photos": 256,
          "probe_iterations": 200, "warm": 64}
ON_CPU = {"tower_seconds": 0.5, "decode_images": 16, "agreement_photos": 16,
          "probe_iterations": 0, "warm": 8}


def settings_for(workdir: Path, device: str, precision: str) -> Settings:
    return load_settings({"TAGGER_DEVICE": device, "TAGGER_PRECISION": precision,
                          "TAGGER_HOME": str(workdir / "home"),
                          "TAGGER_CACHE_DIR": str(workdir / "cache")})


def model(workdir: Path, device: str) -> tuple[Path, str]:
    if device == "cpu":
        return tiny_checkpoint(workdir / "model"), "tiny random Chinese CLIP"
    texts = [p.read_text(encoding="utf-8") for p in LABELSETS.glob("*.txt")]
    return build(workdir / "model", texts), "ViT-B/16 Chinese CLIP, random weights"


Say = Callable[[str], None]


def guarded(figures: dict[str, Any], name: str, say: Say, save: Callable[[dict], None],
            step: Callable[[], Any]) -> None:
    """One section: its figures, or its error; the JSON so far saved after each (a device
    window that closes early still leaves what was measured)."""
    say(name.replace("_", " "))
    try:
        figures[name] = step()
    except Exception as exc:
        say(f"{name} failed: {type(exc).__name__}: {exc}")
        figures[name] = {"error": f"{type(exc).__name__}: {exc}"}
    save(figures)


def measure_all(args: argparse.Namespace, workdir: Path, say: Say,
                save: Callable[[dict], None]) -> dict[str, Any]:
    plan = ON_GPU if args.device == "cuda" else ON_CPU
    precision = "float16" if args.device == "cuda" else "float32"
    sources, images_from = photos.sources(args.carry, workdir / "sources")
    say(f"deriving {args.images} + {plan['warm']} distinct 1,200 px JPEGs from {images_from}")
    root = workdir / "images"
    run_paths = photos.derive(sources, args.images, root / "run")
    photos.derive(sources, plan["warm"], root / "warm", first=args.images)
    say("building the checkpoint")
    folder, described = model(workdir, args.device)
    figures: dict[str, Any] = {"ran": {"device": args.device, "model": described,
                                       "images_from": images_from,
                                       "database": "SQLite (embedded default)"}}
    blobs = [p.read_bytes() for p in run_paths[:max(plan["decode_images"],
                                                    plan["agreement_photos"])]]
    alone(args.device, workdir, folder, blobs, plan, figures, say, save)
    release()  # the device's memory to the workers
    guarded(figures, "end_to_end", say, save,
            lambda: end_to_end(args, workdir, folder, precision, root, figures, say))
    return figures


def alone(device: str, workdir: Path, folder: Path, blobs: list[bytes], plan: dict[str, Any],
          figures: dict[str, Any], say: Say, save: Callable[[dict], None]) -> None:
    """The parts alone: tower, decoder, agreement, race probe (their models freed on return)."""
    settings = settings_for(workdir, device, "float16" if device == "cuda" else "float32")
    limits = Limits.from_settings(settings)
    backend = TorchBackend(settings, folder)
    decode_jpeg, which = measure.jpeg_decoder()
    decoder = NvJpegDecoder(settings, device,
                            decode_jpeg=None if device == "cuda" else decode_jpeg)
    figures["ran"].update(backend=backend.description, decoder=decoder.name, decode_jpeg=which)
    guarded(figures, "tower", say, save,
            lambda: measure.tower(backend, plan["tower_seconds"]))
    guarded(figures, "decode", say, save, lambda: measure.decode(
        decoder, blobs[:plan["decode_images"]], backend.preprocess, limits, 64))
    reference = backend if device == "cpu" else TorchBackend(
        settings_for(workdir, "cpu", "float32"), folder)
    guarded(figures, "agreement", say, save, lambda: measure.agreement(
        reference, backend, decoder, blobs[:plan["agreement_photos"]],
        load_labelset(DEFAULT_LABELS), limits))
    guarded(figures, "corruption", say, save,
            lambda: probe(decoder, blobs[0], backend, limits, plan))


def probe(decoder: NvJpegDecoder, blob: bytes, backend: TorchBackend, limits: Limits,
          plan: dict[str, Any]) -> dict[str, Any]:
    if decoder.device.type != "cuda":
        return {"not_run": "needs a CUDA device"}
    spec, count = backend.preprocess, plan["probe_iterations"]
    return {"this_decoder": measure.corruption(decoder, blob, spec, limits, count, True),
            "torchvision_decode_jpeg_alone": measure.corruption(decoder, blob, spec, limits,
                                                                count, False)}


def end_to_end(args: argparse.Namespace, workdir: Path, folder: Path, precision: str,
               root: Path, figures: dict[str, Any], say: Say) -> list[dict[str, Any]]:
    env = {"TAGGER_MODEL": str(folder), "TAGGER_BACKEND": "torch", "TAGGER_PRECISION": precision,
           "TAGGER_DEVICE": args.device, "TAGGER_FILE_ROOTS": str(root),
           "TAGGER_DECODER": "nvjpeg" if args.device == "cuda" else "auto",
           "TAGGER_CACHE_DIR": str(workdir / "cache")}
    rows: list[dict[str, Any]] = []
    with e2e.broker(args.carry, workdir) as (url, which):
        figures["ran"]["broker"] = which
        for k in [int(k) for k in args.processes.split(",")]:
            left = args.deadline - (time.monotonic() - args.started)
            if left < 60:  # the window closes: what ran is reported, the rest says so
                rows.append({"model_processes": k, "skipped": f"{left:.0f} s left"})
                continue
            say(f"end to end, {k} model process{'es' if k > 1 else ''}")
            try:
                rows.append(e2e.run_k(k, env, (root / "warm", root / "run"), args.images,
                                      workdir / "e2e", url, timeout=left - 30))
            except (TimeoutError, RuntimeError, OSError) as exc:  # the next K may still run
                rows.append({"model_processes": k, "error": f"{type(exc).__name__}: {exc}"[
                    :2000]})
    return rows


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
