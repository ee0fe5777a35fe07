"""The one interface every search backend (BM25, HTTP retriever) implements, and what it returns.

A ``Passage`` is a search result; a ``Snippet`` is a passage as one step of an episode
shows it to the agent, under a link id the agent cites.
"""

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


@dataclass
class Snippet:
    """A passage shown to the agent. ``link_id`` is unique within an episode."""

    link_id: int
    doc_id: str
    title: str
    text: str


@runtime_checkable
class SearchBackend(Protocol):
    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` passages for each query, best first, one list per query."""
        ...
