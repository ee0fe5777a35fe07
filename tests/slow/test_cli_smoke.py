"""The CLI as a user runs it: a traced smoke episode, and the BM25 server under load."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from actors.search import HttpSearch
from actors.search.bm25 import BM25Search
from benchmarks.load_search import load

sys.path.insert(0, str(Path(__file__).parent))
from rest_fixtures import free_port, serve_search  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "bamboogle_support.jsonl.gz"


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_smoke_episode_prints_a_complete_trace(tmp_path):
    proc = subprocess.run(
        [
            sys.executable, "-m", "rest", "episode", "--config", "configs/smoke.yaml",
            "--question", "Who wrote Hamlet?",
            "--set", f"engine.model={tmp_path / 'smoke-model'}",
            "--set", f"search.cache_dir={tmp_path / 'bm25'}",
        ],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Who wrote Hamlet?" in out
    assert "decision" in out  # the first LLM step is always shown with its samples
    assert "ppl" in out.lower() or "perplexity" in out.lower()
    assert any(line.startswith("ended: ") for line in out.splitlines())  # why the episode ended
    assert (tmp_path / "smoke-model" / "model.safetensors").exists()


@contextmanager
def served(cache: Path) -> Iterator[str]:
    """``rest-react serve-search`` over CORPUS in its own process, as a user starts it; yields its /retrieve URL."""
    port = free_port()
    proc = serve_search(CORPUS, port, cache)
    try:
        yield f"http://127.0.0.1:{port}/retrieve"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_search_answers_1000_queries(tmp_path):
    with served(tmp_path / "bm25") as url:
        client = HttpSearch(url, timeout_s=10, retries=3)
        questions = [f"who founded company number {i} in the city" for i in range(1000)]
        answered = 0
        for q in questions:  # one request each, as an agent's search actor would send them
            (result,) = client.search([q], 3)
            answered += len(result) == 3
        assert answered == 1000


def test_serve_search_holds_64_concurrent_clients_for_10000_requests(tmp_path):
    """64 clients in 4 processes, one query per request, no retries: every one of 10,048 requests
    answered with the passages the index itself ranks first; no connection error, no timeout."""
    words = ["Pluto", "honey bees", "Wheel of Fortune", "cybernetics", "Mario", "game show", "Nile", "Seville"]
    queries = [f"{words[i % 8]} {words[(3 * i + 1) % 8]} {i}" for i in range(64)]
    with served(tmp_path / "bm25") as url:
        expect = {q: [p.id for p in ps] for q, ps in zip(
            queries, BM25Search(CORPUS, tmp_path / "bm25").search(queries, 3), strict=True)}
        result = load(url, queries, clients=64, requests_per_client=157, procs=4, expect=expect)
    assert result["requests"] == 10_048
    assert result["connection_errors"] == result["timeouts"] == result["http_errors"] == result["mismatches"] == 0, result
    assert result["ok"] == 10_048
