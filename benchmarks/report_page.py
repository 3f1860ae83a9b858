"""`producer report` on a run of N real photographs: seconds, file size, previews, peak memory.

    python -m benchmarks.report_page --images 1000 --corpus 1200

Writes N images (the corpus repeated under distinct bytes) to a folder, stores a finished run of
them in a fresh SQLite results database (random labels over the default label set, 2 % failed),
then runs ``producer report --run RUN --output FILE`` as a user would and times it.
``--preview-seconds`` is passed on (large WebP and PNG originals need more than the default).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from producer.report import PREVIEW_SECONDS
from testkit import corpus
from testkit.processes import descendants, rss_kib
from testkit.runs import seed_run
from worker.core.errors import Reason
from worker.core.labels import load_labelset
from worker.core.settings import DEFAULT_LABELS
from worker.db import migrate

ROOT = Path(__file__).resolve().parents[1]


def folder_of_images(root: Path, name: str, count: int, folder: Path) -> list[str]:
    folder.mkdir(parents=True)
    uris = []
    for image in corpus.images(root, name, count):
        path = folder / image.name
        path.write_bytes(image.data)
        uris.append(path.as_uri())
    return uris


def run_report(env: dict[str, str], run_id: str, output: Path, preview_seconds: float
               ) -> tuple[float, float, str]:
    """Seconds, the peak of the RSS summed over the command's processes (MiB), what it said."""
    args = [str(Path(sys.executable).parent / "producer"), "report", "--run", run_id,
            "--output", str(output), "--preview-seconds", str(preview_seconds)]
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(_rss_kib(pid) for pid in [proc.pid, *descendants(proc.pid)]))
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    out = proc.communicate()[0]
    if proc.returncode:
        raise SystemExit(f"producer report failed:\n{out}")
    return seconds, peak / 1024, out.strip()


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError, LookupError):  # it may have ended since it was listed
        return rss_kib(pid)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--corpus", choices=["originals", "1200"], default="1200")
    parser.add_argument("--corpus-dir", type=Path, default=ROOT / "corpus")
    parser.add_argument("--preview-seconds", type=float, default=PREVIEW_SECONDS)
    options = parser.parse_args()
    root = corpus.ensure(options.corpus_dir)
    print(f"command: python -m benchmarks.report_page --images {options.images} "
          f"--corpus {options.corpus} --preview-seconds {options.preview_seconds:g}  "
          f"({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="bench-report-") as folder:  # GBs of originals
        measure(root, Path(folder), options)


def measure(root: Path, work: Path, options: argparse.Namespace) -> None:
    uris = folder_of_images(root, options.corpus, options.images, work / "images")
    url = f"sqlite:///{work / 'results.db'}"
    migrate.upgrade(url, create=True)
    failures = {uri: (Reason.UNDECODABLE, "benchmark failure") for uri in uris[::50]}
    run_id = seed_run(url, uris, load_labelset(DEFAULT_LABELS), failures=failures,
                      file_roots=[str(work / "images")], source=str(work / "images"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGER_")}
    env |= {"DATABASE_URL": url, "TAGGER_HOME": str(work / "home")}
    output = work / "report.html"
    seconds, peak, said = run_report(env, run_id, output, options.preview_seconds)
    page = output.read_text(encoding="utf-8")
    shown = len(re.findall(r'<img src="data:', page))
    missing = page.count('class="none"')
    print(f"{options.images} images ({options.corpus}, {len(failures)} failed): report written "
          f"in {seconds:.1f} s, {output.stat().st_size / 1e6:.1f} MB, {shown} <img> "
          f"({missing} without a preview), peak RSS {peak:.0f} MiB (all its processes)")
    print(f"  producer said: {said.splitlines()[-1] if said else ''}")


if __name__ == "__main__":
    main()
