"""Finding images over kept embeddings, torch-free: text queries, similar images, duplicates.

The producer (`search`, `similar`, `duplicates`) and the workbench call ``Finder``; importing
this package stays light (no NumPy, no faiss) until a Finder is asked for.
"""

from typing import TYPE_CHECKING, Any

from worker.search.hits import THRESHOLD, Group, Hit

if TYPE_CHECKING:
    from worker.search.finder import Finder

__all__ = ["THRESHOLD", "Finder", "Group", "Hit"]


def __getattr__(name: str) -> Any:
    if name == "Finder":
        from worker.search.finder import Finder

        return Finder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
