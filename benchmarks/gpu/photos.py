"""The benchmark's images: >= N distinct 1,200 px JPEGs derived from a few dozen real photos.

Each is a different crop of a carried photo (shifted, flipped, scaled to 1,200 px on its long
side, its colours nudged) re-encoded at its own quality: distinct pixels, so neither the content
hash nor a cache can flatter a figure. Without carried photos (CI, a bare checkout) photo-like
JPEGs are made instead, and the output says so.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from testkit.images import photo_like

SIDE = 1200
SYNTHETIC = 6  # sources made when none are carried
PER_JOB = 100  # variants a process makes of one photo at a time: the processes stay busy
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


def sources(carry: Path, folder: Path) -> tuple[list[Path], str]:
    """The carried photos, or a dozen photo-like JPEGs written to ``folder``; and which."""
    carried = sorted(p for p in (carry / "photos").glob("*") if p.suffix.lower() in EXTENSIONS)
    if carried:
        return carried, f"{len(carried)} carried photos"
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for seed in range(SYNTHETIC):
        path = folder / f"synthetic-{seed:02d}.jpg"
        path.write_bytes(photo_like(seed, (1000, 1400)))
        made.append(path)
    return made, f"{SYNTHETIC} photo-like synthetic JPEGs (no carried photos)"


def derive(photos: list[Path], count: int, folder: Path, first: int = 0) -> list[Path]:
    """``count`` distinct JPEGs in ``folder``, numbered from ``first`` (each number its own
    variant), made in parallel, each photo opened once per folder."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for n, photo in enumerate(photos[:count]):
        numbers = list(range(first + n, first + count, len(photos)))
        jobs += [(photo, numbers[i:i + PER_JOB], folder) for i in range(0, len(numbers), PER_JOB)]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        made = [path for paths in pool.map(_variants, jobs) for path in paths]
    return sorted(made)


def _variants(job: tuple[Path, list[int], Path]) -> list[Path]:
    source, indices, folder = job
    with Image.open(source) as opened:
        photo = opened.convert("RGB")
    out = []
    for index in indices:
        path = folder / f"img{index:06d}.jpg"
        path.write_bytes(variant(photo, index))
        out.append(path)
    return out


def variant(photo: Image.Image, seed: int) -> bytes:
    """One crop of ``photo``: 70-100 % of each side, anywhere, maybe mirrored, long side 1,200."""
    rng = np.random.default_rng(seed)
    width, height = photo.size
    crop_w, crop_h = (int(side * rng.uniform(0.7, 1.0)) for side in (width, height))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    image = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = SIDE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BILINEAR, reducing_gap=2.0)
    shift = tuple(int(v) for v in rng.integers(-6, 7, 3))
    image = Image.merge("RGB", [band.point(lambda v, s=s: v + s)
                                for band, s in zip(image.split(), shift, strict=True)])
    out = io.BytesIO()
    image.save(out, "JPEG", quality=int(rng.integers(80, 95)))
    return out.getvalue()
