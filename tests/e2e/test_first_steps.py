"""The first hour, continued: what a new user meets in the first commands, as separate processes.

A mistyped database path, two `tag`s of one folder at once, workers without S3 credentials,
Flower started by hand, catalogue rows that share a URL or point outside the file roots.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.commands import run_producer, user_env


@pytest.fixture
def env(tmp_path: Path, tiny_model: Path) -> dict[str, str]:
    """A user's environment: no services configured, a fresh TAGGER_HOME, the tiny model."""
    return user_env(TAGGER_HOME=str(tmp_path / "home"), TAGGER_MODEL=str(tiny_model),
                    TAGGER_BACKEND="torch")


def test_a_mistyped_sqlite_path_is_refused_unless_created_on_purpose(tmp_path, env):
    """Before: `db upgrade` made the folder and an empty database at any mistyped path."""
    typo = tmp_path / "nonexistent" / "dir" / "x.db"
    env["DATABASE_URL"] = f"sqlite:///{typo}"
    for args in (["db", "upgrade"], ["db", "current"], ["status"], ["runs"]):
        done = run_producer(*args, env=env)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.splitlines() == [
            f"Error: no SQLite database at {typo} (DATABASE_URL): check the path, or create it "
            "with `producer db upgrade --create`"], args
        assert not (tmp_path / "nonexistent").exists(), args
    created = run_producer("db", "upgrade", "--create", env=env)
    assert created.returncode == 0 and typo.is_file(), created.stderr
    assert "schema none ->" in created.stdout
    assert run_producer("status", env=env).returncode == 0
    # The default database (under TAGGER_HOME) is created when first needed, as before.
    del env["DATABASE_URL"]
    assert run_producer("db", "upgrade", env=env).returncode == 0
    assert (tmp_path / "home" / "results.db").is_file()
