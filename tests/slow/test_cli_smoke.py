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


def test_serve_search_answers_1000_queries(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rest", "serve-search", "--corpus", str(CORPUS), "--port", str(port),
         "--cache-dir", str(tmp_path / "bm25")],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        client = HttpSearch(f"http://127.0.0.1:{port}/retrieve", timeout_s=10, retries=3)
        deadline = time.time() + 180
        while True:
            try:
                client.search(["warmup"], 1)
                break
            except SearchError:
                assert server.poll() is None, server.stdout.read()
                assert time.time() < deadline, "server did not come up"
                time.sleep(1)
        questions = [f"who founded company number {i} in the city" for i in range(1000)]
        answered = 0
        for q in questions:  # one request each, as an agent's search actor would send them
            (result,) = client.search([q], 3)
            answered += len(result) == 3
        assert answered == 1000
    finally:
        server.terminate()
        server.wait(timeout=30)
