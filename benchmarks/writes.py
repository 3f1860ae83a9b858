"""Result rows written per second by one process into PostgreSQL: COPY against statements.

    python -m benchmarks.writes --rows 100000 --chunk 64 --chunk 1000

Creates its own PostgreSQL database, writes ``--rows`` results per chunk size the way a worker
does (one transaction per chunk: upsert, clear pending marks, close the delivery), through the
COPY path and through SQLAlchemy's statements, and prints rows/s and the process's CPU per chunk.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psutil
import sqlalchemy as sa

from testkit.services import postgres_database
from worker.core.contract import Item, Result
from worker.db import bulk, writes
from worker.db.schema import engine_for

LABELS = ["台灯", "家具", "桌子", "椅子", "沙发"]


def chunks(rows: int, size: int, run: str) -> list[list[Result]]:
    """Results like a worker's: five labels each, an S3 URI, a version and a content hash."""
    made = []
    for start in range(0, rows, size):
        made.append([Result(
            item=Item(f"s3://products/{run}/{n:09d}.jpg", key=str(n), version=f"etag-{n}"),
            model="OFA-Sys/chinese-clip-vit-base-patch16", labelset_id="0123456789abcdef",
            run_id=run, content_sha256=f"{n:064x}", runtime="torch float16 cuda:0",
            labels=[{"label": label, "score": round(0.9 / (i + 1), 6), "parent": "家居"}
                    for i, label in enumerate(LABELS)]) for n in range(start, start + size)])
    return made


Writer = Callable[[sa.Connection, list[dict[str, Any]], str], None]


def measure(engine: sa.Engine, batches: Sequence[list[Result]], write: Writer
            ) -> dict[str, float]:
    process = psutil.Process()
    cpu, started = process.cpu_times(), time.perf_counter()
    for number, batch in enumerate(batches):
        rows = [result.row() for result in batch]
        with engine.begin() as conn:
            write(conn, rows, f"task-{number}")
    wall = time.perf_counter() - started
    after = process.cpu_times()
    used = (after.user - cpu.user) + (after.system - cpu.system)
    count = sum(len(batch) for batch in batches)
    return {"rows_per_second": round(count / wall), "cpu_ms_per_chunk":
            round(1000 * used / len(batches), 2), "wall_ms_per_chunk":
            round(1000 * wall / len(batches), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, action="append", help="rows per transaction")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with postgres_database(prefix="bench_writes") as url:
        engine = engine_for(url)
        for size in args.chunk or [64, 1000]:
            for name, write in (("copy", bulk.write_chunk),
                                ("statements", writes.write_by_statements)):
                rows = args.rows if name == "copy" else min(args.rows, 20_000)
                batches = chunks(rows, size, uuid.uuid4().hex[:8])
                figures[f"{name} chunk {size}"] = measure(engine, batches, write)
                print(f"{name:>10} chunk {size:>5}: {figures[f'{name} chunk {size}']}",
                      flush=True)
        engine.dispose()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
