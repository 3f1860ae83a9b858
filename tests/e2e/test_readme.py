"""README's first command tags a folder on the embedded default: `producer tag FOLDER`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from testkit.commands import ROOT, tag_as_user, user_env
from testkit.images import write_images
from worker.core.labels import load_labelset
from worker.core.settings import DEFAULT_LABELS


def make_target(name: str) -> list[str]:
    """The recipe lines of a Makefile target."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    found = re.search(rf"^{name}:.*\n((?:\t.*\n)*)", makefile, re.M)
    assert found, f"no {name} target"
    return [line.strip() for line in found.group(1).splitlines()]


def test_readme_first_command_is_producer_tag():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line.strip() for line in readme.splitlines() if line.startswith("    ")]
    first = commands[0].split("#")[0].split()
    assert first[:2] in (["producer", "tag"], ["make", "tag"]), commands[0]
    # `make tag IMAGES=dir` is `producer tag dir` after the set-up, and nothing else: the one
    # command starts and stops its own worker.
    recipe = make_target("tag")
    assert len(recipe) == 1 and recipe[0].startswith("$(BIN)/producer tag $(IMAGES)"), recipe
    assert "make test" in readme[:1500] and make_target("test") == ["$(BIN)/pytest -n 4"]
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_tag_on_the_embedded_default(tmp_path: Path, tiny_model: Path):
    images = write_images(tmp_path / "images", 4)
    home = tmp_path / "home"  # fresh: no database, no broker, no results yet
    # The default backend, `auto`: it exports the model to ONNX, measures and picks a runtime.
    env = user_env(TAGGER_HOME=str(home), TAGGER_MODEL=str(tiny_model),
                   TAGGER_CACHE_DIR=str(tmp_path / "cache"))
    command, records = tag_as_user(str(tmp_path / "images"), env, cwd=tmp_path)

    assert "tagged 4 images, 0 failed" in command.stdout
    assert {r["uri"] for r in records} == {p.as_uri() for p in images}  # the folder, exactly
    shipped = set(load_labelset(DEFAULT_LABELS).labels)  # the default label set
    for record in records:
        assert record["status"] == "done" and record["error"] is None
        assert len(record["labels"]) == 5 and {e["label"] for e in record["labels"]} <= shipped
        assert record["top_label"] == record["labels"][0]["label"]
        assert record["runtime"].startswith(("torch ", "onnx "))  # what auto chose
    assert (home / "results.db").is_file()
    assert list((tmp_path / "cache" / "onnx").rglob("*.onnx"))


def test_the_offline_route_sets_up_first_and_its_model_stays_out_of_git(tmp_path: Path):
    """Before: a fresh clone's first offline command was `.venv/bin/python ...`, with no
    `.venv` yet, and the `./model` it wrote showed up in `git status`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    route = readme[readme.index("**Without the model hub**"):]
    block = re.search(r"\n\n((?:    .*\n)+)", route)
    assert block, route[:500]
    commands = [line.strip() for line in block.group(1).splitlines()]
    assert commands[0] == "make setup", commands
    assert any(c.startswith(".venv/bin/python -m worker.checkpoint ./model") for c in commands)
    ignored = subprocess.run(["git", "check-ignore", "-q", "model/model.safetensors"],
                             cwd=ROOT, check=False)
    assert ignored.returncode == 0, "./model is not in .gitignore"
