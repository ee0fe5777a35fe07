"""The search service: one search backend (BM25 index or HTTP retriever) shared by many samplers.

``SharedSearch`` is the plain class, ``SearchActor`` its Ray shim. A BM25 index is
built (or loaded from its cache) once per actor instead of once per sampler, and
samplers reach it through ``actors.sampler.RemoteSearch``, which bounds every wait.

``held_out``: passage ids a caller may ask to have hidden (``hide_held_out=True``). The
ReST driver passes the eval questions' gold passages and hides them from the training
rollouts only, so no training example can restate a test fact (``rest.leakage``); the
evaluation searches the whole corpus.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import ray

from actors.search import make_search
from core.config import SearchConfig
from core.search import Passage


class SharedSearch:
    """Answers batches of queries with the backend ``cfg`` names (see ``actors.search.make_search``)."""

    def __init__(self, cfg: SearchConfig, held_out: Collection[str] = ()):
        self.cfg = cfg
        self.backend = make_search(cfg)
        self.held_out = frozenset(held_out)
        self.calls = 0
        self.queries = 0
        self.hidden = 0  # held-out passages dropped from results

    def search(self, queries: Sequence[str], topk: int, hide_held_out: bool = False) -> list[list[Passage]]:
        """Top-``topk`` passages per query, best first (one list per query); with ``hide_held_out``
        the held-out passages are skipped and the next-best ones take their places."""
        if isinstance(queries, str):
            raise TypeError("search: queries must be a sequence of strings, not one string")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"search: topk must be an int >= 1, got {topk!r}")
        if hide_held_out and self.held_out:
            results = self._visible(list(queries), topk)
        else:
            results = self.backend.search(list(queries), topk)
        self.calls += 1
        self.queries += len(queries)
        return results

    def _visible(self, queries: list[str], topk: int) -> list[list[Passage]]:
        """Ask for more than ``topk`` (doubling) until ``topk`` visible passages or the backend runs out."""
        results: list[list[Passage]] = [[] for _ in queries]
        todo, k = list(range(len(queries))), topk + min(len(self.held_out), topk)
        while todo:
            short = []
            for i, found in zip(todo, self.backend.search([queries[i] for i in todo], k), strict=True):
                shown, dropped = [], 0
                for p in found:
                    if len(shown) == topk:
                        break
                    if p.id in self.held_out:
                        dropped += 1
                    else:
                        shown.append(p)
                if len(shown) == topk or len(found) < k:  # enough, or nothing more to ask for
                    results[i] = shown
                    self.hidden += dropped
                else:
                    short.append(i)
            todo, k = short, 2 * k
        return results

    def stats(self) -> dict:
        return {"backend": self.cfg.backend, "calls": self.calls, "queries": self.queries, "hidden": self.hidden}

    def ping(self) -> bool:
        return True


SearchActor = ray.remote(SharedSearch)
