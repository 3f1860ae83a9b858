"""Import boundaries (import-linter): the producer stays light, the worker in layers, no
circles, the producer's commands stand apart."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

from testkit.imports import ROOT, heavy_imports

LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent))


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS, "import-linter is not installed (pip install -e '.[test]')"
    return subprocess.run([LINT_IMPORTS, "--no-cache", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def contracts() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    return config


def test_import_contracts_are_kept():
    done = lint_imports()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    declared = sum(name.startswith("importlinter:contract:") for name in contracts())
    assert f"{declared} kept, 0 broken" in done.stdout


def test_every_command_module_is_in_the_independence_contract():
    # A command added without its line in the contract could import another unnoticed.
    listed = contracts()["importlinter:contract:producer-commands-independent"]["modules"]
    found = {f"producer.commands.{path.stem}" for path in (ROOT / "producer" / "commands")
             .glob("*.py") if path.stem not in {"__init__", "common"}}
    assert set(listed.split()) == found


def test_the_contracts_see_real_imports(tmp_path: Path):
    # The same root packages with a contract the code breaks: the graph is not empty, and
    # subpackages without an __init__ (invisible to import-linter) would fail here too.
    config = (ROOT / ".importlinter").read_text().split("[importlinter:contract")[0] + (
        "[importlinter:contract:broken]\nname = broken on purpose\ntype = forbidden\n"
        "source_modules =\n    producer\nforbidden_modules =\n    worker.core\n    worker.db\n")
    (tmp_path / "broken.ini").write_text(config)
    done = lint_imports("--config", str(tmp_path / "broken.ini"))
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    assert "producer is not allowed to import worker.core" in done.stdout
    assert "producer is not allowed to import worker.db" in done.stdout


def test_producer_help_without_torch():
    loaded = heavy_imports(
        "from click.testing import CliRunner\n"
        "from producer.cli import main\n"
        "for args in (['--help'], ['tag', '--help'], ['enqueue', '--help'], ['export', '--help'],"
        " ['status', '--help'], ['db', 'upgrade', '--help'], ['retry-failed', '--help'],"
        " ['report', '--help'], ['relabel', '--help'], ['serve-metrics', '--help'],"
        " ['db', 'wait', '--help'], ['search', '--help'], ['similar', '--help'],"
        " ['duplicates', '--help']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n")
    assert loaded == []


def test_a_blocked_import_is_noticed():
    # The check above would pass vacuously if blocking did nothing: it does.
    loaded = heavy_imports("try:\n    import torch\nexcept ImportError:\n    print('blocked')\n"
                           "import numpy\n")
    assert loaded == ["numpy"]


def test_the_registered_parts_are_forbidden_without_a_line_in_the_config():
    from testkit.importlint import registered_modules

    found = registered_modules({"backend", "decoder"})
    assert {"worker.backends.torch_clip", "worker.backends.onnx_clip", "worker.decoders.pillow",
            "worker.decoders.nvjpeg", "torch", "transformers", "onnxruntime"} <= set(found)
    assert "worker.sources.s3" not in found  # the producer lists with the sources itself
