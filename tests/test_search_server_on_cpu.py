"""The retriever server (FastAPI on uvicorn) under concurrent clients, with a real BM25 index:
correct answers and no connection errors, a search that never blocks the event loop, and
failures that stay with the request that caused them. Small numbers; no timing is asserted."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from actors.search.bm25 import BM25Search
from actors.search.server import make_server
from benchmarks.load_search import drive, summarize
from core.search import Passage, SearchError

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "bamboogle_support.jsonl.gz"
WORDS = ["Pluto", "honey bees", "Wheel of Fortune", "cybernetics", "Mario", "game show", "Nile", "Seville"]


class Served:
    """``make_server(backend)`` serving in a thread for a ``with`` block; ``url`` is its /retrieve."""

    def __init__(self, backend, **kwargs):
        self.server = make_server(backend, "127.0.0.1", 0, **kwargs)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/retrieve"

    def __enter__(self) -> Served:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def bm25(tmp_path_factory) -> BM25Search:
    return BM25Search(CORPUS, tmp_path_factory.mktemp("bm25"))


def test_concurrent_clients_get_the_backends_answers_with_no_connection_errors(bm25):
    queries = [f"{WORDS[i % 8]} {WORDS[(3 * i + 1) % 8]}" for i in range(40)]
    expect = {q: [p.id for p in ps] for q, ps in zip(queries, bm25.search(queries, 3), strict=True)}
    assert all(expect.values())
    with Served(bm25) as served:
        result = summarize(drive(served.url, queries, clients=16, requests_per_client=10, expect=expect))
        health = requests.get(served.url.replace("/retrieve", "/health"), timeout=10).json()
    assert result["requests"] == 160 and result["ok"] == 160, result
    assert result["connection_errors"] == result["timeouts"] == result["http_errors"] == result["mismatches"] == 0
    assert result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert health == {"status": "ok", "passages": len(bm25)}


def test_a_new_connection_per_request_is_served_too(bm25):
    queries = ["Pluto region", "honey bees wax"]
    expect = {q: [p.id for p in ps] for q, ps in zip(queries, bm25.search(queries, 3), strict=True)}
    with Served(bm25) as served:
        result = drive(served.url, queries, clients=8, requests_per_client=5, expect=expect, reconnect=True)
    assert result["ok"] == 40 and result["connection_errors"] == 0, result


class Gated:
    """A backend whose search for "wait" blocks until released (a slow search, without a clock)."""

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def __len__(self) -> int:
        return 1

    def search(self, queries, topk):
        if "wait" in queries:
            self.entered.set()
            if not self.release.wait(60):
                raise SearchError("never released")
        if "boom" in queries:
            raise RuntimeError("index corrupted")
        if "refuse" in queries:
            raise SearchError("backend refused")
        return [[Passage(q, "T", f"text of {q}", 1.0)] for q in queries]


def test_a_running_search_does_not_block_other_requests():
    backend = Gated()
    with Served(backend) as served:
        slow: dict = {}
        t = threading.Thread(target=lambda: slow.update(
            r=requests.post(served.url, json={"queries": ["wait"]}, timeout=60)))
        t.start()
        assert backend.entered.wait(30), "the slow search never started"
        # the backend is busy inside the slow call: the event loop still answers
        assert requests.get(served.url.replace("/retrieve", "/health"), timeout=10).status_code == 200
        bad = requests.post(served.url, json={"queries": "not a list"}, timeout=10)
        assert bad.status_code == 400 and "'queries' must be a list of strings" in bad.json()["error"]
        assert not slow  # still waiting
        backend.release.set()
        t.join(60)
    assert slow["r"].status_code == 200 and slow["r"].json()["result"][0][0]["id"] == "wait"


def test_backend_failures_are_500_for_their_request_only():
    with Served(Gated(), threads=2) as served:
        boom = requests.post(served.url, json={"queries": ["boom"]}, timeout=10)
        refused = requests.post(served.url, json={"queries": ["refuse"]}, timeout=10)
        fine = requests.post(served.url, json={"queries": ["fine"], "return_scores": True}, timeout=10)
    assert boom.status_code == 500 and boom.json() == {"error": "search backend failed: RuntimeError: index corrupted"}
    assert refused.status_code == 500 and refused.json() == {"error": "backend refused"}
    assert fine.status_code == 200
    assert fine.json() == {"result": [[{"document": {"id": "fine", "contents": '"T"\ntext of fine'}, "score": 1.0}]]}


def test_a_chunked_body_over_the_limit_is_refused():
    def chunks():
        yield b'{"queries": ["'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"]}'

    with Served(Gated()) as served:
        resp = requests.post(served.url, data=chunks(), timeout=10)  # no Content-Length: chunked
        again = requests.post(served.url, json={"queries": ["ok"]}, timeout=10)
    assert resp.status_code == 400 and resp.json() == {"error": "body is over the 1048576-byte limit"}
    assert again.status_code == 200


def test_a_taken_port_fails_when_the_server_is_made():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(OSError):
            make_server(Gated(), "127.0.0.1", s.getsockname()[1])
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        make_server(Gated(), "127.0.0.1", 0, threads=0)


@pytest.mark.timeout(300)
def test_serve_search_with_worker_processes_answers_correctly_and_stops_on_ctrl_c(bm25, tmp_path):
    """``rest-react serve-search --workers 2``: the searches run in 2 processes holding the index."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rest", "serve-search", "--corpus", str(CORPUS), "--port", str(port),
         "--cache-dir", str(tmp_path), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).parents[1])
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving 1800 passages at http://127.0.0.1:{port}/retrieve"), line
        assert "2 search processes" in line
        queries = [f"{WORDS[i % 8]} {WORDS[(5 * i + 2) % 8]}" for i in range(20)]
        expect = {q: [p.id for p in ps] for q, ps in zip(queries, bm25.search(queries, 3), strict=True)}
        result = drive(f"http://127.0.0.1:{port}/retrieve", queries, clients=8, requests_per_client=5, expect=expect)
        assert result["ok"] == 40 and result["connection_errors"] == 0, result
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "stopped" in out and "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
