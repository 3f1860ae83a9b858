"""Benchmark images: real photographs, repeated under distinct bytes to reach N images."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FOLDERS = {"originals": "original", "1200": "catalog"}
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}
# Debian's wallpaper packages: real photographs (JPEG, PNG with and without alpha, grayscale)
# up to 5.6K wide, fetched from the package registry this machine reaches.
PACKAGES = ("gnome-backgrounds", "mate-backgrounds")


@dataclass(frozen=True)
class Image:
    """One benchmark image: a name (S3 key) and its bytes."""

    name: str
    data: bytes


def ensure(root: Path) -> Path:
    """The corpus under ``root``, built there first if it is missing (see ``build``)."""
    if not all((root / folder).is_dir() for folder in FOLDERS.values()):
        build(root)
    return root


def build(root: Path) -> None:
    """original/: the packages' photos as shipped; catalog/: product-style 1,200 px JPEGs."""
    from PIL import Image as Pil

    with tempfile.TemporaryDirectory() as work:
        try:
            subprocess.run(["apt-get", "download", *PACKAGES], cwd=work, check=True,
                           capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"cannot build the corpus under {root} (apt-get download "
                             f"{' '.join(PACKAGES)}: {exc}); pass --corpus-dir with original/ "
                             "and catalog/ folders of images") from exc
        for deb in sorted(Path(work).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), f"{work}/x"], check=True)
        found = sorted(p for p in Path(work, "x").rglob("*")
                       if p.suffix.lower() in EXTENSIONS and p.is_file() and not p.is_symlink())
        for folder in FOLDERS.values():
            (root / folder).mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(found, start=1):
            original = root / "original" / f"img{i:03d}{path.suffix.lower()}"
            shutil.copyfile(path, original)
            with Pil.open(original) as image:
                image = image.convert("RGB")
                image.thumbnail((1200, 1200), Pil.Resampling.LANCZOS)
                image.save(root / "catalog" / f"img{i:03d}.jpg", "JPEG", quality=90)


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
