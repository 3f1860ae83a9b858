"""File names as a disk holds them: `producer tag` on names that are not UTF-8, end to end."""

from __future__ import annotations

import os
from pathlib import Path

from testkit.commands import run_producer, tag_as_user, user_env
from testkit.images import image_bytes


def test_names_that_are_not_utf8_are_tagged_and_tagged_once(tmp_path: Path, tiny_model: Path):
    photos = tmp_path / "photos"
    names = [b"caf\xe9.png", b"\xb4\xb2\xb5\xc6.png", b"sub-\xe9t\xe9/\xff\xfe.png"]  # Latin-1, GBK
    for number, name in enumerate(names):
        path = photos / os.fsdecode(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(number))
    env = user_env(TAGGER_HOME=str(tmp_path / "home"), TAGGER_MODEL=str(tiny_model),
                   TAGGER_BACKEND="torch")
    _, records = tag_as_user(str(photos), env, cwd=tmp_path)
    assert {r["uri"] for r in records} == {(photos / os.fsdecode(n)).as_uri() for n in names}
    assert {r["status"] for r in records} == {"done"}, records
    again = run_producer("enqueue", "--dry-run", str(photos), env=env, cwd=tmp_path)
    assert again.returncode == 0 and "skipped 3 (3 done)" in again.stderr, again.stderr
