"""Search backends for the agent's Search() step: BM25 over a local corpus, or a
Search-R1-compatible HTTP retriever; plus a server that exposes any backend over HTTP."""

from __future__ import annotations

from actors.search.base import Passage, SearchBackend, SearchError
from actors.search.bm25 import BM25Search
from actors.search.http import HttpSearch
from actors.search.server import make_server, serve_search_main
from rest.config import SearchConfig

__all__ = [
    "BM25Search",
    "HttpSearch",
    "Passage",
    "SearchBackend",
    "SearchError",
    "make_search",
    "make_server",
    "serve_search_main",
]


def make_search(cfg: SearchConfig) -> SearchBackend:
    """The backend ``cfg.backend`` names: ``bm25`` over ``cfg.corpus``, or ``http`` at ``cfg.url``."""
    if cfg.backend == "bm25":
        if not cfg.corpus:
            raise SearchError("search.corpus is empty: the bm25 backend needs a passage corpus file")
        return BM25Search(cfg.corpus, cfg.cache_dir)
    if cfg.backend == "http":
        return HttpSearch(cfg.url, timeout_s=cfg.timeout_s, retries=cfg.retries)
    raise SearchError(f"search.backend: unknown backend {cfg.backend!r} (known: bm25, http)")
