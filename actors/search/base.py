"""The one interface every search backend (BM25, HTTP retriever) implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class SearchError(RuntimeError):
    """A search backend could not answer (server down after retries, bad corpus...)."""


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str
    score: float = 0.0


@runtime_checkable
class SearchBackend(Protocol):
    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` passages for each query, best first, one list per query."""
        ...
