"""The producer as tests drive it: in-process (click's runner), as a user's subprocess, or its
own enqueue() on raw URIs; and the results a run left in the database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from testkit.processes import Command, with_environment
from testkit.services import wait_until

ROOT = Path(__file__).resolve().parents[1]
PRODUCER = str(Path(sys.executable).parent / "producer")  # the console script a user runs


def invoke(*args: str) -> Any:
    """``producer ARGS`` in this process (its environment); click's Result, whatever the exit."""
    from click.testing import CliRunner

    from producer.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def producer(*args: str) -> str:
    """``producer ARGS`` in this process; fail on a non-zero exit; return its stdout."""
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def run_id(output: str) -> str:
    """The run id from ``run <id>: listed ...``."""
    found = re.search(r"^run (\w+):", output, re.M)
    assert found, output
    return found.group(1)


def run_producer(*args: str, env: Mapping[str, str], cwd: Path = ROOT, timeout: float = 120,
                 **options: Any) -> subprocess.CompletedProcess[str]:
    """``producer ARGS`` as a user types it: its own process, ``env`` as the environment."""
    return subprocess.run([PRODUCER, *args], env=dict(env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **options)


def user_env(**values: str) -> dict[str, str]:
    """This environment without the test services' broker and database, plus ``values``."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"CELERY_BROKER_URL", "DATABASE_URL", "MAKEFLAGS"}
           and not k.startswith(("TAGGER_", "PYTEST_"))}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **values}


def send(uris: Sequence[str], *, chunk_size: int = 4, force: bool = False,
         file_roots: Sequence[str | Path] = (), source: str = "test") -> Any:
    """The producer's own enqueue() of raw URIs, with this process's settings; its Summary."""
    from producer.enqueue import enqueue
    from worker.core.contract import Item
    from worker.core.labels import load_labelset
    from worker.core.settings import load_settings

    settings = load_settings()
    return enqueue([Item(uri) for uri in uris], settings=settings,
                   labelset=load_labelset(settings.labels_path, settings.templates_path),
                   source=source, chunk_size=chunk_size, force=force,
                   file_roots=[str(p) for p in file_roots])


def rows(url: str, **where: str) -> dict[str, sa.Row]:
    """Result rows by URI, optionally filtered on columns."""
    from worker.db.schema import engine_for, results

    query = sa.select(results).where(*(results.c[k] == v for k, v in where.items()))
    with engine_for(url).connect() as conn:
        return {row.uri: row for row in conn.execute(query.order_by(results.c.uri))}


def count(url: str, table: str = "results") -> int:
    from worker.db import schema

    with schema.engine_for(url).connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(
            schema.metadata.tables[table])) or 0)


def wait_for_results(url: str, uris: Sequence[str], timeout: float) -> dict[str, sa.Row]:
    """Wait until every URI has a result; then check that each has exactly one."""
    from worker.db.schema import engine_for, results

    def all_rows() -> list[sa.Row]:
        with engine_for(url).connect() as conn:
            return list(conn.execute(sa.select(results)))

    wait_until(lambda: {r.uri for r in all_rows()} >= set(uris), timeout,
               message=f"not every image got a result in {timeout}s")
    found = all_rows()
    counts = Counter(r.uri for r in found)
    assert set(counts) == set(uris) and max(counts.values()) == 1, counts  # one result each
    return {r.uri: r for r in found}


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def one_line_error(*args: str) -> str:
    """``producer ARGS`` must fail with exit code 1 and one line, ``Error: ...``; that line."""
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: "), result.output
    return str(result.output.strip())


def tag_as_user(location: str, env: Mapping[str, str], cwd: Path, timeout: float = 120
                ) -> tuple[Command, list[dict[str, Any]]]:
    """``producer tag LOCATION`` as a user runs it, checked: exit 0, progress on stderr, a
    result file, and nothing left running. Returns the command and the run's result records."""
    with Command([PRODUCER, "tag", location], env, cwd) as command:  # cleans up after checks
        assert command.wait(timeout) == 0, command.stderr + command.stdout
        assert "Traceback" not in command.stderr
        assert re.search(r"^tagging: \d+/\d+ images", command.stderr, re.M), command.stderr
        assert_nothing_left(command, env)
    found = re.search(r"^labels of \d+ images: (.+)$", command.stdout, re.M)
    assert found, command.stdout
    output = Path(found.group(1))
    assert output.name == f"{run_id(command.stderr)}.jsonl"  # the run's own file
    return command, jsonl(output)


def assert_nothing_left(command: Command, env: Mapping[str, str]) -> None:
    """No process the command started lives on, nor any with its TAGGER_HOME (or HOME)."""
    assert command.left_running() == [], command.stderr
    home = ("TAGGER_HOME", env["TAGGER_HOME"]) if "TAGGER_HOME" in env else ("HOME", env["HOME"])
    assert with_environment(*home) == [], f"processes with {home} still run"
