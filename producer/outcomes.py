"""What `producer tag` and `producer relabel` did, as their commands print it (render.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from producer.enqueue import Summary


@dataclass
class Tagged:
    """What ``producer tag`` did, for its closing summary."""

    summary: Summary
    output: Path
    exported: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    top_labels: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    report: Path | None = None


@dataclass(frozen=True)
class Relabelling:
    """What `producer relabel` sent: its run, about how many images, in how many ranges."""

    run_id: str
    images: int  # kept embeddings (one per content), or with ``scope_run`` that run's images
    ranges: int
    taken_over: dict[str, int] = field(default_factory=dict)  # earlier runs' lost ranges
    scope_run: str | None = None
