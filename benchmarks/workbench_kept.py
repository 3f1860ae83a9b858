"""Kept embeddings for the workbench benchmark's results: the weights they belong to (a
full-size checkpoint of random weights, whose text tower search runs), one float16 512-wide
embedding per done image (testkit/vectors.py: ``catalogue``, 1% with a near-copy),
and the images table that resolves them, written with COPY."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from testkit.vectors import catalogue, near_copies
from worker.backends.weights import checkpoint_digest
from worker.checkpoint import build as build_checkpoint
from worker.core.embedding import key_of, pack
from worker.core.settings import LABELSETS
from worker.db import models
from worker.db.schema import engine_for

DIM, CHUNK, PLANTED = 512, 50_000, 0.01

# Each done result's image at its content (as a worker's write leaves it); the key is the first
# 8 bytes of the content hash with the top bit flipped (worker/core/embedding.py: key_of).
IMAGES = """
INSERT INTO images (uri_hash, uri, content_key, content)
SELECT uri_hash, uri,
       (('x' || substr(content_sha256, 1, 16))::bit(64) # x'8000000000000000')::bigint,
       decode(content_sha256, 'hex')
FROM results WHERE status = 'done'
ON CONFLICT (uri_hash) DO NOTHING
"""


def weights(folder: Path, url: str) -> tuple[str, int]:
    """(TAGGER_MODEL, model id): a full-size checkpoint of random weights, registered with the
    width of its embeddings as a worker that kept some would leave it."""
    model = folder / "model"
    if not (model / "config.json").is_file():
        build_checkpoint(model, [p.read_text("utf-8") for p in LABELSETS.glob("*.txt")])
    digest = checkpoint_digest(model, folder / "cache").digest
    return str(model), models.identify(engine_for(url), digest, str(model), DIM).id


def content(n: int) -> str:
    """Result n's content hash, as benchmarks/workbench.py's SEED makes it inside PostgreSQL."""
    return hashlib.sha256(f"content{n}".encode()).hexdigest()


def vectors(count: int) -> np.ndarray:
    """``count`` embeddings; row i + count - planted is a near-copy of row i (cosine ~0.995)."""
    rows = catalogue(count, DIM, seed=1)
    planted = int(count * PLANTED)
    rows[count - planted:] = near_copies(rows[:planted], seed=1)
    return rows


def fill(url: str, model_id: int, numbers: list[int]) -> float:
    """Embeddings of results ``numbers`` (done ones), then the images table; seconds taken."""
    started = time.perf_counter()
    rows = vectors(len(numbers))
    raw = engine_for(url).raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, len(numbers), CHUNK):
            out = io.StringIO()
            for n, vector in zip(numbers[start:start + CHUNK], rows[start:start + CHUNK],
                                 strict=True):
                sha = bytes.fromhex(content(n))
                out.write(f"{key_of(sha)}\t{model_id}\t\\\\x{sha.hex()}\t"
                          f"\\\\x{pack(vector).hex()}\n")
            out.seek(0)
            cursor.copy_expert("COPY embeddings (key, model_id, sha256, vector) FROM STDIN", out)
            raw.commit()
        cursor.close()
    finally:
        raw.close()
    with engine_for(url).begin() as conn:
        conn.execute(sa.text(IMAGES))
    return time.perf_counter() - started


def environment(folder: Path, model: str, url: str) -> dict[str, str]:
    """What the server process and the towers' export (a process of its own) read."""
    values = {"TAGGER_HOME": str(folder / "home"), "TAGGER_MODEL": model, "DATABASE_URL": url,
              "TAGGER_CACHE_DIR": str(folder / "cache"), "HF_HUB_OFFLINE": "1"}
    os.environ.update(values)
    return values
