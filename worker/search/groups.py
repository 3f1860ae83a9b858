"""Near-duplicate groups: pairs above a threshold joined into groups (union-find)."""

from __future__ import annotations

from collections.abc import Iterable

Pair = tuple[int, int, float]


def group(pairs: Iterable[Pair]) -> list[tuple[list[int], list[Pair]]]:
    """Connected groups of keys, each with the pairs inside it (every pair lands in one group,
    and every member has at least one pair); the largest groups first."""
    parent: dict[int, int] = {}

    def root(key: int) -> int:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]  # path halving: near-flat trees
            key = parent[key]
        return key

    best: dict[tuple[int, int], float] = {}
    for a, b, score in pairs:  # a pair may be found from both of its sides
        best[a, b] = max(score, best.get((a, b), score))
    edges = [(a, b, score) for (a, b), score in best.items()]
    for a, b, _ in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    inside: dict[int, list[Pair]] = {}
    for key in parent:
        members.setdefault(root(key), []).append(key)
    for edge in edges:
        inside.setdefault(root(edge[0]), []).append(edge)
    found = [(sorted(members[r]), sorted(inside[r], key=lambda e: -e[2])) for r in members]
    return sorted(found, key=lambda g: (-len(g[0]), g[0][0]))
