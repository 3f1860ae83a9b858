"""Benchmark images: the make-corpus photos, repeated under distinct bytes to reach N images."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MAKE_CORPUS = Path("/work/shared/scripts/make-corpus")
FOLDERS = {"originals": "original", "1200": "catalog"}
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass(frozen=True)
class Image:
    """One benchmark image: a name (S3 key) and its bytes."""

    name: str
    data: bytes


def ensure(root: Path, script: Path = MAKE_CORPUS) -> Path:
    """Build the corpus under ``root`` with the shared make-corpus script if it is not there."""
    if not all((root / folder).is_dir() for folder in FOLDERS.values()):
        if not script.exists():
            raise SystemExit(f"no corpus under {root} and no {script} to build one: "
                             "pass --corpus-dir with original/ and catalog/ folders")
        subprocess.run([str(script), str(root), sys.executable], check=True)
    return root


def photos(root: Path, corpus: str) -> list[Path]:
    folder = root / FOLDERS[corpus]
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)


def distinct(data: bytes, copy: int) -> bytes:
    """The same picture under different bytes: a trailer after the end of the image data.

    JPEG, PNG and WebP decoders stop at their end marker, so the pixels and the decode cost are
    unchanged, while the content hash differs and the pipeline's dedupe cannot skip the copy.
    """
    return data if copy == 0 else data + f"\0benchmark-copy-{copy}".encode()


def images(root: Path, corpus: str, count: int) -> list[Image]:
    """``count`` images: the corpus in order, then again as distinct-byte copies."""
    paths = photos(root, corpus)
    if not paths:
        raise SystemExit(f"no images under {root / FOLDERS[corpus]}")
    datas = [p.read_bytes() for p in paths]
    out = []
    for i in range(count):
        copy, index = divmod(i, len(paths))
        out.append(Image(f"{copy:03d}-{paths[index].name}", distinct(datas[index], copy)))
    return out
