"""``python -m benchmarks.gpu``: see the package's docstring (the device window's command)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str] | None) -> argparse.Namespace:
    import benchmarks.gpu

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu",
                                     description=benchmarks.gpu.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--images", type=int, default=20_000,
                        help="distinct images per end-to-end run (default 20,000)")
    parser.add_argument("--processes", default="1,2,3", help="the K model processes to run")
    parser.add_argument("--carry", type=Path, default=ROOT / "gpu-carry",
                        help="what gpu_carry.sh made: photos/, debs/ (default: gpu-carry/)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--deadline", type=float, default=420,
                        help="seconds after which no further end-to-end run starts")
    args = parser.parse_args(argv)
    args.started = time.monotonic()
    return args


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def versions() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except (ImportError, OSError, RuntimeError) as exc:
        out["torchvision"] = f"not importable ({type(exc).__name__})"
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["cuda"] = torch.version.cuda
        try:
            out["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out["driver"] = "unknown (no nvidia-smi)"
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmarks.gpu.run import measure_all

    def save(figures: dict[str, Any]) -> None:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, ensure_ascii=False))

    with tempfile.TemporaryDirectory(prefix="tagger-gpu-") as temp:
        figures = measure_all(args, Path(temp), say, save)
    figures["ran"].update(versions())
    save(figures)
    table(figures)


def table(figures: dict[str, Any]) -> None:
    ran = figures["ran"]
    print(f"\nGPU path on {ran.get('gpu', ran['device'])} ({ran['model']}, "
          f"{ran.get('backend', '?')}; {ran.get('broker', '?')}, {ran['database']}; "
          f"{ran['images_from']})")
    for name, line in (("tower", "image tower alone       {images_per_second} images/s, "
                                 "batch {batch}"),
                       ("decode", "decode + resize alone   {images_per_second} images/s, "
                                  "{pillow_share:.1%} to Pillow"),
                       ("agreement", "GPU vs CPU path         mean cosine {mean_cosine}, min "
                                     "{min_cosine}, top-1 {top1_agreement:.1%} ({photos} photos)"),
                       ("corruption", "decode race probe       {}")):
        got = figures.get(name, {})
        text = (f"error: {got['error']}" if "error" in got
                else line.format(got) if name == "corruption" else line.format(**got))
        print(f"  {text}")
    print(f"  decoder: {ran.get('decode_jpeg', '?')}")
    rows = figures.get("end_to_end", [])
    if isinstance(rows, dict):  # the section failed as a whole
        print(f"  end to end: error: {rows['error']}")
        return
    print(f"  {'K':>3}{'images/s':>11}{'failed':>8}{'main ms':>9}  per model process: "
          "model ms, decode ms, GPU MiB (nvidia-smi); torch's peak MiB")
    for row in rows:
        if "images_per_second" not in row:
            print(f"  {row['model_processes']:>3}  {row.get('skipped') or row.get('error')}")
            continue
        per = "; ".join(f"{p['model_process_ms']}, {p['its_decode_processes_ms']}, "
                        f"{p['gpu_memory_mib']}" for p in row["per_model_process"])
        print(f"  {row['model_processes']:>3}{row['images_per_second']:>11}{row['failed']:>8}"
              f"{row['celery_main_ms']:>9}  {per}; {row['torch_peak_gpu_mib']}")


if __name__ == "__main__":
    main()
