"""The device window's benchmark runs whole on the CPU, so it cannot rot between windows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_benchmark_runs_on_the_cpu(tmp_path: Path):
    # Nothing carried (photo-like JPEGs, the embedded broker); one worker of two model
    # processes (benchmarks/gpu_check.sh runs K = 1, 2, 3 in a bare-machine virtualenv).
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--images", "64",
         "--processes", "2", "--carry", str(tmp_path / "nothing"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["ran"]["broker"].startswith("embedded")
    assert figures["tower"]["images_per_second"] > 0
    assert figures["decode"]["images"] > 0 and figures["decode"]["pillow_share"] == 0
    assert figures["agreement"]["mean_cosine"] > 0.99
    [row] = figures["end_to_end"]
    assert row["model_processes"] == 2 and row["images"] == 64 and row["failed"] == 0
    assert len(row["per_model_process"]) == 2
    assert "image tower alone" in done.stdout
