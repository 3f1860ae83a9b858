"""Finding images over kept embeddings, torch-free: text queries, similar images, duplicates.

The producer (`search`, `similar`, `duplicates`) and the workbench call ``Finder``.
"""

from worker.search.finder import Finder
from worker.search.hits import Group, Hit

__all__ = ["Finder", "Group", "Hit"]
