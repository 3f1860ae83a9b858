"""Deployment files as a cluster or a host would take them: Kubernetes manifests rendered by
kustomize, and the commands they (and docker-compose.yml) run, parsed by the real CLIs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
KUBECTL = shutil.which("kubectl")


def render(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize FOLDER``: every object, as the API server would receive it."""
    assert KUBECTL, "kubectl is not installed"
    done = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def check_command(argv: list[str], home: Path) -> None:
    """The program is one this project installs, and it accepts every option given."""
    program, args = argv[0], argv[1:]
    assert (BIN / program).is_file(), f"{program} is not installed by the project"
    if program == "alembic":
        from alembic.config import CommandLine

        parsed = CommandLine().parser.parse_args(args)  # exits on an unknown command or option
        assert parsed.cmd[0].__name__ == args[0]
        return
    if args[:3] == ["-A", "worker", "flower"]:
        from flower.options import options

        for arg in args[3:]:
            name = arg.split("=", 1)[0].removeprefix("--").replace("_", "-")
            assert name in options._options, f"flower has no option {arg}"
        return
    # click parses every option before --help answers, so an unknown one fails here.
    env = {"PATH": str(BIN), "TAGGER_HOME": str(home), "HOME": str(home)}
    checked = subprocess.run([str(BIN / program), *args, "--help"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
