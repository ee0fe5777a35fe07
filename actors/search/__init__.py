"""Search backends for the agent's Search() step: BM25 over a local corpus, or a
Search-R1-compatible HTTP retriever; plus a server that exposes any backend over HTTP."""

from __future__ import annotations

from typing import Any

from actors.search.http import HttpSearch
from core.config import SearchConfig
from core.search import SearchBackend, SearchError


def __getattr__(name: str) -> Any:
    """``BM25Search`` is imported on first use: bm25s pulls in numba/llvmlite, which every CLI import
    (and every vLLM worker that re-imports the CLI) would otherwise pay for."""
    if name == "BM25Search":
        from actors.search.bm25 import BM25Search

        return BM25Search
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_search(cfg: SearchConfig) -> SearchBackend:
    """The backend ``cfg.backend`` names: ``bm25`` over ``cfg.corpus``, or ``http`` at ``cfg.url``."""
    if cfg.backend == "bm25":
        from actors.search.bm25 import BM25Search

        if not cfg.corpus:
            raise SearchError("search.corpus is empty: the bm25 backend needs a passage corpus file")
        return BM25Search(cfg.corpus, cfg.cache_dir)
    if cfg.backend == "http":
        return HttpSearch(cfg.url, timeout_s=cfg.timeout_s, retries=cfg.retries)
    raise SearchError(f"search.backend: unknown backend {cfg.backend!r} (known: bm25, http)")
