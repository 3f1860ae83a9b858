"""What a search answers: images with their scores, and groups of near-duplicates."""

from __future__ import annotations

from dataclasses import dataclass

# The cosine at which two images count as one. Measured with random checkpoints only (where
# re-encoded copies sit at 0.98-0.9998 and different photos reach 0.98): unmeasured for the real
# checkpoint until its weights are at hand (docs/search.md).
THRESHOLD = 0.95


@dataclass(frozen=True)
class Hit:
    """One image: its URI, its cosine to the query, its content and its newest labels' run."""

    uri: str
    score: float
    sha256: str
    top_label: str | None
    run_id: str | None


@dataclass(frozen=True)
class Group:
    """Images near enough to be one: each member's score is its best similarity to another
    member; ``similarities`` are the pairs (URI, URI, cosine) at or above the threshold that
    joined them; ``exact`` when every member has the same content (identical bytes)."""

    members: list[Hit]
    similarities: list[tuple[str, str, float]]
    exact: bool
