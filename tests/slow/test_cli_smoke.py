"""The CLI as a user runs it: a traced smoke episode, and the BM25 server under load."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.search import HttpSearch
from core.search import SearchError

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``rest-react serve-search`` over CORPUS in its own process for a ``with`` block, as a user starts it."""

    def __init__(self, cache: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/retrieve"
        self.cache = cache

    def __enter__(self) -> Served:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rest", "serve-search", "--corpus", str(CORPUS), "--port", str(self.port),
             "--cache-dir", str(self.cache)],
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        client = HttpSearch(self.url, timeout_s=10, retries=3)
        deadline = time.time() + 180
        while True:
            try:
                client.search(["warmup"], 1)
                return self
            except SearchError:
                assert self.proc.poll() is None, self.proc.stdout.read()
                assert time.time() < deadline, "server did not come up"
                time.sleep(1)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_serve_search_answers_1000_queries(tmp_path):
    with Served(tmp_path / "bm25") as served:
        client = HttpSearch(served.url, timeout_s=10, retries=3)
        questions = [f"who founded company number {i} in the city" for i in range(1000)]
        answered = 0
        for q in questions:  # one request each, as an agent's search actor would send them
            (result,) = client.search([q], 3)
            answered += len(result) == 3
        assert answered == 1000


def test_serve_search_holds_64_concurrent_clients_for_10000_requests(tmp_path):
    """64 clients in 4 processes, one query per request, no retries: every one of 10,048 requests
    answered with the passages the index itself ranks first; no connection error, no timeout."""
    from actors.search.bm25 import BM25Search
    from benchmarks.load_search import load

    words = ["Pluto", "honey bees", "Wheel of Fortune", "cybernetics", "Mario", "game show", "Nile", "Seville"]
    queries = [f"{words[i % 8]} {words[(3 * i + 1) % 8]} {i}" for i in range(64)]
    with Served(tmp_path / "bm25") as served:
        expect = {q: [p.id for p in ps] for q, ps in zip(
            queries, BM25Search(CORPUS, tmp_path / "bm25").search(queries, 3), strict=True)}
        result = load(served.url, queries, clients=64, requests_per_client=157, procs=4, expect=expect)
    assert result["requests"] == 10_048
    assert {k: result[k] for k in ("connection_errors", "timeouts", "http_errors", "mismatches")} == dict.fromkeys(
        ("connection_errors", "timeouts", "http_errors", "mismatches"), 0), result
    assert result["ok"] == 10_048
