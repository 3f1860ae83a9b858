"""`producer export` as a user runs it (its own process): kept embeddings of folder images and
catalogue rows in one file, and a failed export that leaves the file that was there."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq

from testkit.commands import run_producer
from testkit.runs import seed_kept
from worker.core.contract import Item
from worker.core.embedding import sha256_of

FOLDER, CATALOGUE = 5003, 7  # the reads come in batches of 5,000: one holds no key at all


def test_embeddings_of_folder_images_and_catalogue_rows_export_to_one_parquet_file(
        tagger_env, tmp_path):
    """Before: `Table schema does not match` (key null vs string), a traceback and a corrupt
    file, when one batch held only folder images (no key) and another catalogue rows."""
    items = ([Item(f"file:///photos/{i}.jpg") for i in range(FOLDER)]
             + [Item(f"s3://shop/{i}.jpg", key=f"sku-{i}") for i in range(CATALOGUE)])
    # Folder images' contents first in key order, the catalogue's last.
    contents = [("0" if item.key is None else "f") + sha256_of(item.uri.encode())[1:]
                for item in items]
    seed_kept(tagger_env["DATABASE_URL"], tagger_env["TAGGER_MODEL"], items, contents=contents)
    output = tmp_path / "vectors.parquet"
    done = run_producer("export", "--embeddings", "--output", str(output), env=os.environ)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"exported {FOLDER + CATALOGUE} embeddings to {output}"
    table = pq.read_table(output)
    keys = table.column("key").to_pylist()
    assert keys.count(None) == FOLDER
    assert sorted(k for k in keys if k) == sorted(f"sku-{i}" for i in range(CATALOGUE))
    assert table.num_rows == FOLDER + CATALOGUE and len(table.column("embedding")[0]) == 16


def test_an_export_that_fails_leaves_the_file_that_was_there(tagger_env, tmp_path):
    """Before: without pyarrow the output was truncated to 0 bytes, then the command failed."""
    seed_kept(tagger_env["DATABASE_URL"], tagger_env["TAGGER_MODEL"],
              [Item(f"s3://shop/{i}.jpg", key=str(i)) for i in range(3)])
    blocker = tmp_path / "without" / "pyarrow"  # an import of pyarrow fails, as if missing
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named pyarrow')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(blocker.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    output = tmp_path / "labels.parquet"
    for args in (("export",), ("export", "--embeddings")):
        output.write_bytes(b"last night's export")
        done = run_producer(*args, "--output", str(output), env=env)
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip() == ("Error: Parquet export needs pyarrow: pip install "
                                       "'catalog-tagger[parquet]'")
        assert output.read_bytes() == b"last night's export"
        assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["labels.parquet"]
    assert run_producer("export", "--output", str(output), env=os.environ).returncode == 0
    assert pq.read_table(output).num_rows == 3


def test_an_export_to_a_folder_that_is_not_there_is_one_line(tagger_env, tmp_path: Path):
    done = run_producer("export", "--output", str(tmp_path / "no" / "x.jsonl"), env=os.environ)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"Error: cannot write {tmp_path / 'no' / 'x.jsonl'}: ")
