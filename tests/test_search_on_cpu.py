"""Search backends on CPU: BM25 over a real shared corpus, its disk cache, corpus errors,
and the Search-R1 HTTP protocol end to end (real server in-process, real client)."""

from __future__ import annotations

import gzip
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from actors.search import BM25Search, HttpSearch, make_search
from actors.search.http import format_contents, split_contents
from actors.search.server import make_server, serve_search_main
from core.config import SearchConfig
from core.search import Passage, SearchBackend, SearchError

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "bamboogle_support.jsonl.gz"
pytestmark = pytest.mark.skipif(not CORPUS.is_file(), reason=f"shared corpus missing: {CORPUS}")

# Picked by hand from the corpus: a query and the passage that answers it.
KNOWN = [
    ("Lowell Regio region on the dwarf planet Pluto", "bs-001068"),
    ("who directed Super Mario RPG", "bs-000615"),
    ("Vanna White hostess of Wheel of Fortune", "bs-001632"),
    ("hexagonal wax cells built by honey bees", "bs-001125"),  # no title word in the query
    ("Victor Glushkov founder of cybernetics", "bs-001267"),
    ("Bradford Gates Rutter game show contestant", "bs-001630"),
]


@pytest.fixture(scope="module")
def bm25(tmp_path_factory) -> BM25Search:
    return BM25Search(CORPUS, tmp_path_factory.mktemp("bm25cache"))


@pytest.fixture(scope="module")
def server_url(bm25):
    server = make_server(bm25, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- BM25


@pytest.mark.parametrize("query,expected_id", KNOWN)
def test_bm25_ranks_the_expected_passage_first(bm25, query, expected_id):
    [hits] = bm25.search([query], 3)
    assert hits[0].id == expected_id
    assert hits[0] == Passage(
        expected_id, bm25.get(expected_id).title, bm25.get(expected_id).text, hits[0].score
    )


def test_bm25_batched_equals_one_by_one_and_is_sorted(bm25):
    queries = [q for q, _ in KNOWN]
    batched = bm25.search(queries, 5)
    assert batched == [bm25.search([q], 5)[0] for q in queries]
    for hits in batched:
        assert len(hits) == 5
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True) and scores[-1] > 0


def test_bm25_empty_stopword_and_unknown_queries_return_nothing(bm25):
    results = bm25.search(["", "   ", "the of and is it? A", "zzqxqzz", "Pluto"], 3)
    assert results[:4] == [[], [], [], []]
    assert results[4] and all("Pluto" in h.text for h in results[4])


def test_bm25_topk_beyond_corpus_and_bad_arguments(bm25):
    hits = bm25.search(["Pluto"], 5000)[0]
    assert 0 < len(hits) < len(bm25)  # only passages that share a term come back
    assert bm25.search([], 3) == []
    for bad_topk in (0, -1, True, 2.0):
        with pytest.raises(SearchError, match="topk"):
            bm25.search(["Pluto"], bad_topk)
    with pytest.raises(SearchError, match="list of strings"):
        bm25.search("Pluto", 3)


def test_bm25_len_and_get(bm25):
    assert len(bm25) == 1800
    p = bm25.get("bs-001068")
    assert p.title == "Lowell Regio" and "Pluto" in p.text
    with pytest.raises(KeyError, match="no-such-id"):
        bm25.get("no-such-id")


def _write_corpus(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def test_bm25_cache_is_built_once_then_loaded(tmp_path):
    rows = [
        {"id": f"d{i}", "title": f"Title {i}", "text": f"alpha beta word{i}", "extra": 1} for i in range(20)
    ]
    corpus = _write_corpus(tmp_path / "c.jsonl.gz", rows, gz=True)
    cache = tmp_path / "cache"
    first = BM25Search(corpus, cache)
    assert not first.loaded_from_cache
    entries = sorted(p.name for p in cache.iterdir())
    assert entries == [first.index_dir.name] and first.corpus_sha256 in entries[0]  # no temp dir left
    second = BM25Search(corpus, cache)
    assert second.loaded_from_cache and second.index_dir == first.index_dir
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert second.search(["word7", "title alpha"], 3) == first.search(["word7", "title alpha"], 3)
    assert second.search(["word7"], 1)[0][0].id == "d7"

    # Same passages, other bytes (plain JSONL): another key, another index.
    third = BM25Search(_write_corpus(tmp_path / "c.jsonl", rows), cache)
    assert not third.loaded_from_cache and len(list(cache.iterdir())) == 2

    # A broken cache is rebuilt, not trusted.
    (first.index_dir / "meta.json").write_text("{not json")
    fourth = BM25Search(corpus, cache)
    assert not fourth.loaded_from_cache and fourth.search(["word7"], 1)[0][0].id == "d7"
    assert BM25Search(corpus, cache).loaded_from_cache


GOOD = {"id": "a", "title": "t", "text": "x"}


@pytest.mark.parametrize(
    "rows,message",
    [
        ([GOOD, {"id": "b", "title": "t", "text": "y"}, "{oops"], r"c\.jsonl:3: malformed JSON"),
        ([GOOD, "[1, 2]"], r":2: expected a JSON object"),
        ([GOOD, {"id": "b", "text": "y"}], r":2: missing key 'title'"),
        ([{"title": "t", "text": "x"}], r":1: missing key 'id'"),
        ([GOOD, "", {"id": "b", "title": "t"}], r":3: missing key 'text'"),
        ([GOOD, {"id": "b", "title": "t", "text": 5}], r":2: 'text' must be a string"),
        ([GOOD, {"id": None, "title": "t", "text": "x"}], r":2: 'id' must be"),
        ([GOOD, GOOD], r":2: duplicate passage id 'a'"),
        ([], r"corpus is empty"),
        (["", "  "], r"corpus is empty"),
    ],
)
def test_bad_corpus_gives_one_line_error(tmp_path, rows, message):
    corpus = _write_corpus(tmp_path / "c.jsonl", rows)
    with pytest.raises(SearchError, match=message) as e:
        BM25Search(corpus, tmp_path / "cache")
    assert "\n" not in str(e.value)


def test_missing_corpus_file(tmp_path):
    with pytest.raises(SearchError, match="corpus file not found: .*nope.jsonl"):
        BM25Search(tmp_path / "nope.jsonl", tmp_path / "cache")


# ---------------------------------------------------------------- wire format


@pytest.mark.parametrize(
    "contents,title,text",
    [
        ('"Lowell Regio"\nLowell Regio is a region.', "Lowell Regio", "Lowell Regio is a region."),
        ('"The "Boss""\nline one\nline two', 'The "Boss"', "line one\nline two"),
        ('""\nno title', "", "no title"),
        ("plain text, no title line", "", "plain text, no title line"),
        ('"quoted but no newline"', "", '"quoted but no newline"'),
        ('"half\nquoted', "", '"half\nquoted'),
    ],
)
def test_split_contents(contents, title, text):
    assert split_contents(contents) == (title, text)
    if contents.startswith('"') and "\n" in contents and title:
        assert format_contents(title, text) == contents


# ---------------------------------------------------------------- server + client


def test_server_answers_both_shapes_like_the_backend(bm25, server_url):
    queries = [q for q, _ in KNOWN] + ["the of and"]
    direct = bm25.search(queries, 3)
    plain = requests.post(f"{server_url}/retrieve", json={"queries": queries, "topk": 3}, timeout=10)
    assert plain.status_code == 200
    want_docs = [[{"id": p.id, "contents": f'"{p.title}"\n{p.text}'} for p in ps] for ps in direct]
    assert plain.json() == {"result": want_docs}
    scored = requests.post(
        f"{server_url}/retrieve", json={"queries": queries, "topk": 3, "return_scores": True}, timeout=10
    ).json()
    assert [[e["document"] for e in r] for r in scored["result"]] == want_docs
    assert [[e["score"] for e in r] for r in scored["result"]] == [[p.score for p in ps] for ps in direct]
    default_topk = requests.post(f"{server_url}/retrieve", json={"queries": ["Pluto region"]}, timeout=10)
    assert len(default_topk.json()["result"][0]) == 3
    health = requests.get(f"{server_url}/health", timeout=10).json()
    assert health == {"status": "ok", "passages": 1800}


def test_client_round_trip_equals_backend(bm25, server_url):
    client = HttpSearch(f"{server_url}/retrieve")
    queries = [q for q, _ in KNOWN] + [""]
    assert client.search(queries, 4) == bm25.search(queries, 4)
    assert client.search([], 3) == []


def test_client_reads_unscored_shape(bm25, server_url, monkeypatch):
    """A server that ignores return_scores: same passages, score 0."""
    client = HttpSearch(f"{server_url}/retrieve")
    real_post = client._session.post

    def post_without_scores(url, json, timeout):
        return real_post(url, json={**json, "return_scores": False}, timeout=timeout)

    monkeypatch.setattr(client._session, "post", post_without_scores)
    got = client.search([KNOWN[0][0]], 3)[0]
    want = bm25.search([KNOWN[0][0]], 3)[0]
    assert got == [Passage(p.id, p.title, p.text, 0.0) for p in want]


def test_thousand_queries_from_concurrent_clients(bm25, server_url):
    words = [
        "Pluto",
        "honey bees",
        "Wheel of Fortune",
        "cybernetics",
        "Mario",
        "game show",
        "Nile",
        "Seville",
    ]
    queries = [f"{words[i % len(words)]} {words[(i * 3 + 1) % len(words)]}" for i in range(1000)]
    direct = dict(zip(queries, bm25.search(queries, 3), strict=True))
    errors: list[str] = []

    def worker(part: list[str]) -> None:
        client = HttpSearch(f"{server_url}/retrieve")
        try:
            for q in part:  # one request per query: 1,000 requests in all
                if client.search([q], 3) != [direct[q]]:
                    errors.append(f"mismatch for {q!r}")
        except SearchError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=worker, args=(queries[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


@pytest.mark.parametrize(
    "body,message",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"topk": 3}).encode(), "'queries' must be a list of strings"),
        (json.dumps({"queries": "one query"}).encode(), "'queries' must be a list of strings"),
        (json.dumps({"queries": ["a", 3]}).encode(), "'queries' must be a list of strings"),
        (json.dumps({"queries": ["a"], "topk": 0}).encode(), "'topk' must be an integer from 1 to 100"),
        (json.dumps({"queries": ["a"], "topk": 101}).encode(), "'topk'"),
        (json.dumps({"queries": ["a"], "topk": "3"}).encode(), "'topk'"),
        (json.dumps({"queries": ["a"], "topk": True}).encode(), "'topk'"),
        (json.dumps({"queries": ["a"], "return_scores": "yes"}).encode(), "'return_scores'"),
        (json.dumps({"queries": ["x" * (1 << 20)]}).encode(), "over the 1048576-byte limit"),
    ],
)
def test_server_rejects_bad_requests(server_url, body, message):
    resp = requests.post(f"{server_url}/retrieve", data=body, timeout=10)
    assert resp.status_code == 400
    assert message in resp.json()["error"]


def test_server_unknown_paths(server_url):
    assert requests.post(f"{server_url}/search", json={"queries": ["a"]}, timeout=10).status_code == 404
    assert requests.get(f"{server_url}/retrieve", timeout=10).status_code == 404
    # the server still answers afterwards
    assert requests.get(f"{server_url}/health", timeout=10).status_code == 200


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(30)
def test_client_gives_up_on_a_dead_server():
    url = f"http://127.0.0.1:{_closed_port()}/retrieve"
    client = HttpSearch(url, timeout_s=2, retries=3, backoff_s=0.05)
    with pytest.raises(SearchError) as e:
        client.search(["anything"], 3)
    assert str(e.value) == f"search server {url} unreachable after 3 tries: connection refused"


class _Stub:
    """A tiny stdlib server that answers /retrieve with a canned (status, body) and counts requests."""

    def __init__(self, status: int, body: bytes, delay_s: float = 0.0):
        stub = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                stub.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(delay_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/retrieve"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


DOC = {"id": "1", "contents": '"T"\ntext'}


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "status,body,tries,message",
    [
        (200, b"<html>oops</html>", 1, "malformed answer: not JSON"),
        (200, json.dumps({"results": []}).encode(), 1, 'expected {"result": [...]}'),
        (200, json.dumps({"result": [[DOC], [DOC]]}).encode(), 1, "2 result lists for 1 queries"),
        (200, json.dumps({"result": [[{"id": "1"}]]}).encode(), 1, "result[0][0]: expected a document"),
        (
            200,
            json.dumps({"result": [[{"document": DOC, "score": "high"}]]}).encode(),
            1,
            "score is not a number",
        ),
        (500, b"Internal Server Error", 3, "unreachable after 3 tries: HTTP 500"),
        (503, json.dumps({"error": "index loading"}).encode(), 3, "HTTP 503: index loading"),
        (400, json.dumps({"error": "'topk' bad"}).encode(), 1, "refused the request: HTTP 400: 'topk' bad"),
    ],
)
def test_client_rejects_bad_answers(status, body, tries, message):
    stub = _Stub(status, body)
    try:
        client = HttpSearch(stub.url, timeout_s=5, retries=3, backoff_s=0.01)
        with pytest.raises(SearchError, match="search server http://127.0.0.1") as e:
            client.search(["q"], 3)
        assert message in str(e.value) and "\n" not in str(e.value)
        assert stub.requests == tries
    finally:
        stub.close()


@pytest.mark.timeout(30)
def test_client_times_out_and_retries_a_slow_server():
    stub = _Stub(200, json.dumps({"result": [[DOC]]}).encode(), delay_s=1.0)
    try:
        client = HttpSearch(stub.url, timeout_s=0.2, retries=2, backoff_s=0.01)
        with pytest.raises(SearchError, match="unreachable after 2 tries: timed out after 0.2s"):
            client.search(["q"], 3)
        assert stub.requests == 2
    finally:
        stub.close()


def test_client_parses_a_good_stub_answer():
    stub = _Stub(200, json.dumps({"result": [[DOC, {"contents": "untitled"}], []]}).encode())
    try:
        got = HttpSearch(stub.url).search(["a", "b"], 3)
        assert got == [[Passage("1", "T", "text"), Passage("", "", "untitled")], []]
    finally:
        stub.close()


def test_client_rejects_bad_settings():
    with pytest.raises(SearchError, match="must start with http"):
        HttpSearch("localhost:8000/retrieve")
    with pytest.raises(SearchError, match="retries=0"):
        HttpSearch("http://127.0.0.1:8000/retrieve", retries=0)


# ---------------------------------------------------------------- config


def test_make_search_from_config(tmp_path):
    backend = make_search(SearchConfig(backend="bm25", corpus=str(CORPUS), cache_dir=str(tmp_path)))
    assert isinstance(backend, BM25Search) and isinstance(backend, SearchBackend) and len(backend) == 1800
    client = make_search(
        SearchConfig(backend="http", url="http://127.0.0.1:9/retrieve", timeout_s=2.5, retries=2)
    )
    assert isinstance(client, SearchBackend) and (client.timeout_s, client.retries) == (2.5, 2)
    with pytest.raises(SearchError, match="search.corpus is empty"):
        make_search(SearchConfig(backend="bm25", corpus=""))


def test_the_search_service_hides_held_out_passages_only_when_asked(tmp_path):
    """The ReST driver's rollouts skip the eval questions' gold passages; the next best fill their places."""
    from actors.search.actor import SharedSearch

    cfg = SearchConfig(backend="bm25", corpus=str(CORPUS), cache_dir=str(tmp_path))
    queries = [q for q, _ in KNOWN]
    full = make_search(cfg).search(queries, 12)
    held_out = [full[0][0].id, full[0][2].id, full[1][0].id]  # incl. a best hit and one further down
    service = SharedSearch(cfg, held_out)
    assert service.search(queries, 3) == [r[:3] for r in full]  # not asked: the whole corpus
    hidden = service.search(queries, 3, hide_held_out=True)
    for got, ranked in zip(hidden, full, strict=True):
        assert got == [p for p in ranked if p.id not in held_out][:3]
    assert service.stats()["hidden"] == 3
    assert service.search(["zzzz qqqq"], 3, hide_held_out=True) == [[]]  # nothing matches: no endless asking


@pytest.mark.timeout(180)
def test_serve_search_main_runs_until_ctrl_c(tmp_path):
    """The `serve-search` entry point in its own process: prints its address, answers, stops on SIGINT."""
    code = (
        "import sys; from actors.search.server import serve_search_main; "
        f"sys.exit(serve_search_main({str(CORPUS)!r}, '127.0.0.1', 0, {str(tmp_path)!r}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1]
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving 1800 passages at http://127.0.0.1:"), line
        url = line.split()[4]
        [hits] = HttpSearch(url).search([KNOWN[0][0]], 1)
        assert hits[0].id == KNOWN[0][1]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0  # generous: CI machines can be loaded
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_search_main_reports_a_bad_corpus(tmp_path, capsys):
    assert serve_search_main(str(tmp_path / "missing.jsonl"), "127.0.0.1", 0, str(tmp_path)) == 2
    assert "corpus file not found" in capsys.readouterr().err


def test_the_cli_does_not_import_bm25s_until_a_bm25_backend_is_made():
    """vLLM's CPU workers re-import the CLI; bm25s drags numba/llvmlite in, which broke them."""
    code = ("import sys, rest.cli, actors.search as s; assert 'bm25s' not in sys.modules, 'eager'; "
            "s.BM25Search; assert 'bm25s' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
