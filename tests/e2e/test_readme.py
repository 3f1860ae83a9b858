"""README's first command, `make tag IMAGES=dir`, tags a folder on the embedded default."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.helpers import ROOT, image_bytes


def test_readme_commands_are_the_makefile_targets():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    top = readme[:1500]
    assert "make tag IMAGES=" in top and "make test" in top
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "\ntag: setup" in makefile and "\ntest: lint" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_make_tag_on_the_embedded_default(tmp_path: Path, tiny_model: Path, labels_file: Path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        (images / f"商品 {i}.jpg").write_bytes(image_bytes(i, fmt="JPEG"))
    env = {k: v for k, v in os.environ.items()
           if k not in {"CELERY_BROKER_URL", "DATABASE_URL", "MAKEFLAGS"}}
    env |= {"TAGGER_MODEL": str(tiny_model), "TAGGER_LABELS": str(labels_file),
            "TAGGER_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["make", "--no-print-directory", "tag", f"IMAGES={images}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in
               (tmp_path / "home" / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 4
    assert {r["status"] for r in records} == {"done"}
    assert all(len(r["labels"]) == 5 for r in records)
