"""What a command imports: run code in a fresh interpreter with some packages unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "numpy", "PIL", "onnxruntime", "faiss")
_MARK = "imported-heavy:"


def heavy_imports(code: str, blocked: Sequence[str] = ("torch", "transformers"),
                  env: Mapping[str, str] | None = None, timeout: float = 120) -> list[str]:
    """Run ``code`` where importing ``blocked`` fails; return the HEAVY modules it loaded.

    A ``None`` entry in sys.modules makes ``import torch`` raise ImportError, so code that
    needs a blocked package fails (AssertionError with its output) instead of loading it.
    """
    script = (f"import json, sys\nfor name in {list(blocked)!r}:\n    sys.modules[name] = None\n"
              f"{code}\n"
              f"print({_MARK!r} + json.dumps([m for m in {list(HEAVY)!r} "
              "if sys.modules.get(m) is not None]))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=None if env is None else dict(env),
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith(_MARK))
    return list(json.loads(line[len(_MARK):]))
