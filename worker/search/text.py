"""A text query to an embedding: the ONNX text tower and its tokenizer, loaded once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worker.core.errors import ConfigError
from worker.search.towers import Towers, session

MAX_QUERY_CHARS = 200  # a template with its label; the tower reads 52 tokens of it anyway


class QueryError(ConfigError):
    """A query that cannot be searched for, said in one line."""


def check_query(query: str) -> str:
    text = " ".join(query.split())
    if not text:
        raise QueryError("the query is empty: give the words to search for, e.g. 红色连衣裙")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query has {len(text)} characters; at most {MAX_QUERY_CHARS} "
                         "are read (the text tower sees 52 tokens): shorten it")
    return text


class TextEncoder:
    """Texts under prompt templates to one normalised float32 embedding, as labels are made."""

    def __init__(self, towers: Towers) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(towers.tokenizer))
        self.tokenizer.enable_truncation(towers.text_length)
        self.tokenizer.enable_padding()
        self.session = session(towers.text)

    def encode(self, query: str, templates: Sequence[str]) -> np.ndarray:
        """The query under every template, each normalised, averaged, normalised (GUIDE §1)."""
        text = check_query(query)
        encoded = self.tokenizer.encode_batch([t.format(text) for t in templates])
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        rows = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        mean = rows.mean(axis=0)
        return (mean / np.linalg.norm(mean)).astype(np.float32)
