"""The search service: one search backend (BM25 index or HTTP retriever) shared by many samplers.

``SearchService`` is the plain class, ``SearchActor`` its Ray shim. A BM25 index is
built (or loaded from its cache) once per actor instead of once per sampler, and
samplers reach it through ``actors.sampler.RemoteSearch``, which bounds every wait.
"""

from __future__ import annotations

from collections.abc import Sequence

import ray

from actors.search import make_search
from actors.search.base import Passage
from rest.config import SearchConfig


class SearchService:
    """Answers batches of queries with the backend ``cfg`` names (see ``actors.search.make_search``)."""

    def __init__(self, cfg: SearchConfig):
        self.cfg = cfg
        self.backend = make_search(cfg)
        self.calls = 0
        self.queries = 0

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` passages per query, best first (one list per query)."""
        if isinstance(queries, str):
            raise TypeError("search: queries must be a sequence of strings, not one string")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"search: topk must be an int >= 1, got {topk!r}")
        results = self.backend.search(list(queries), topk)
        self.calls += 1
        self.queries += len(queries)
        return results

    def stats(self) -> dict:
        return {"backend": self.cfg.backend, "calls": self.calls, "queries": self.queries}

    def ping(self) -> bool:
        return True


SearchActor = ray.remote(SearchService)
