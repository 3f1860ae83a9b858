"""End to end on one device: a folder -> producer enqueue -> broker -> K model processes ->
results database; images/s, CPU-ms per image of every process, GPU memory of each.

The broker is a redis-server from the carried Debian packages when they start here, else the
embedded default (kombu's folder broker); results go to SQLite (PostgreSQL's packages do not fit
the carry, and refuse to run as root). Each K gets a fresh broker queue and database, so no
result of an earlier run is reused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from benchmarks import distributed
from testkit.processes import Worker
from testkit.services import RedisServer, free_port
from worker.db import migrate


@contextlib.contextmanager
def broker(carry: Path, workdir: Path) -> Iterator[tuple[str, str]]:
    """A redis:// URL from the carried redis-server, or "" (the embedded broker); and which."""
    debs = sorted((carry / "debs").glob("*.deb"))
    if not debs or not shutil.which("dpkg"):
        yield "", "embedded folder broker (no redis-server carried)"
        return
    root = workdir / "redis-root"
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    libs = sorted({str(p.parent) for p in root.rglob("*.so*")})
    os.environ["LD_LIBRARY_PATH"] = ":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")])
    os.environ["PATH"] = f"{root / 'usr' / 'bin'}:{os.environ['PATH']}"
    try:
        server = RedisServer(workdir / "redis", appendonly=False).start()
    except (OSError, TimeoutError, subprocess.SubprocessError) as exc:
        yield "", f"embedded folder broker (the carried redis-server did not start: {exc})"
        return
    try:
        yield server.url, "carried redis-server"
    finally:
        server.stop()


def cpu_seconds(worker: Worker) -> dict[str, Any]:
    """CPU seconds (user + system) of the Celery main process and of each model process, with
    its decode processes (live ones, and ended ones reaped by it) counted apart."""
    main = psutil.Process(worker.proc.pid)  # type: ignore[union-attr]
    times = main.cpu_times()
    out: dict[str, Any] = {"main": times.user + times.system, "models": {}}
    for child in main.children():
        with contextlib.suppress(psutil.Error):
            if "celery" not in " ".join(child.cmdline()):
                continue
            own = child.cpu_times()
            decoders = own.children_user + own.children_system
            for grandchild in child.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    decoders += sum(grandchild.cpu_times()[:2])
            out["models"][child.pid] = (own.user + own.system, decoders)
    return out


def gpu_memory_mib() -> dict[int, int]:
    """GPU memory of each process on the device (nvidia-smi), by pid; empty where unknown."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [line.split(",") for line in done.stdout.splitlines() if "," in line]
    return {int(pid): int(mib) for pid, mib in rows if pid.strip().isdigit()}


def torch_peaks_mib(port: int, k: int) -> list[float]:
    """Each model process's peak GPU memory held by tensors, from its /metrics."""
    import urllib.request

    peaks = []
    for child in range(port, port + k + 1):
        with contextlib.suppress(OSError):
            text = urllib.request.urlopen(f"http://127.0.0.1:{child}/metrics", timeout=5).read()
            for line in text.decode().splitlines():
                if line.startswith('tagger_gpu_memory_bytes{kind="peak"}'):
                    peaks.append(round(float(line.split()[-1]) / 2**20, 1))
    return peaks


def run_k(k: int, env: dict[str, str], folders: tuple[Path, Path], count: int, workdir: Path,
          broker_url: str, timeout: float) -> dict[str, Any]:
    """One run with ``-P prefork -c k`` on fresh state: warm on ``folders[0]``, time
    ``folders[1]`` (``count`` images) within ``timeout`` seconds."""
    port = free_port()
    home = workdir / f"k{k}"
    home.mkdir(parents=True, exist_ok=True)
    database = f"sqlite:///{home / 'results.db'}"
    migrate.upgrade(database, create=True)
    svc = distributed.Services(
        {**env, "TAGGER_HOME": str(home), "TAGGER_QUEUE": f"gpu-{uuid.uuid4().hex[:8]}",
         "CELERY_BROKER_URL": broker_url, "DATABASE_URL": database,
         "TAGGER_METRICS_PORT": str(port)}, database,
        folder=folders[0].parent)
    worker = Worker(svc.env, home / "worker.log", threads=None, concurrency=k, name=f"gpu-k{k}")
    worker.start(timeout)
    try:
        distributed.run(svc, worker, folders[0].name, len(list(folders[0].iterdir())), timeout)
        before = cpu_seconds(worker)
        result = distributed.run(svc, worker, folders[1].name, count, timeout)
        after, memory, peaks = cpu_seconds(worker), gpu_memory_mib(), torch_peaks_mib(port, k)
    finally:
        worker.stop()
    models = [{"model_process_ms": round(1000 * (t[0] - before["models"][pid][0]) / count, 3),
               "its_decode_processes_ms": round(1000 * (t[1] - before["models"][pid][1])
                                                / count, 3),
               "gpu_memory_mib": memory.get(pid)}
              for pid, t in after["models"].items() if pid in before["models"]]
    return {"model_processes": k, "images": count, "failed": result.failed,
            "images_per_second": round(result.rate, 1), "seconds": round(result.seconds, 2),
            "celery_main_ms": round(1000 * (after["main"] - before["main"]) / count, 3),
            "per_model_process": models, "torch_peak_gpu_mib": peaks}
