"""A Search-R1-compatible retriever server over any ``SearchBackend`` (stdlib only).

Endpoints (the wire format is documented in ``actors.search.http``):

- ``POST /retrieve`` ``{"queries": [str, ...], "topk": 3, "return_scores": false}``
  -> ``{"result": [[doc, ...] per query]}``; ``topk`` defaults to 3 and must be in 1..100.
- ``GET /health`` -> ``{"status": "ok", "passages": N}`` (N is null if the backend has no length).
- anything else -> 404; a bad request -> 400 ``{"error": "..."}``; a failing backend -> 500.

Requests are served by a thread each (HTTP/1.1 keep-alive), but the backend is
called under one lock: bm25s is not documented thread-safe, and one batched call
is cheap anyway. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from actors.search.base import SearchBackend, SearchError
from actors.search.http import format_contents

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
MAX_TOPK = 100
DEFAULT_TOPK = 3


class BadRequest(ValueError):
    """A client error, answered with HTTP 400 and its message."""


def parse_retrieve(body: bytes) -> tuple[list[str], int, bool]:
    """Validate a /retrieve body; return (queries, topk, return_scores) or raise BadRequest."""
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(req, dict):
        raise BadRequest("body must be a JSON object")
    queries = req.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise BadRequest("'queries' must be a list of strings")
    topk = req.get("topk", DEFAULT_TOPK)
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise BadRequest(f"'topk' must be an integer from 1 to {MAX_TOPK}, got {topk!r}")
    return_scores = req.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest(f"'return_scores' must be true or false, got {return_scores!r}")
    return queries, topk, return_scores


def make_server(backend: SearchBackend, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A ready-to-run server (call ``serve_forever``); port 0 picks a free port (see ``server_address``)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stall
        timeout = 60  # an idle keep-alive connection frees its thread after this

        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/health":
                return self._send(404, {"error": f"no such path: {self.path}"})
            passages = len(backend) if hasattr(backend, "__len__") else None
            self._send(200, {"status": "ok", "passages": passages})

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/retrieve":
                self.close_connection = True  # the body is not read: do not reuse the stream
                return self._send(404, {"error": f"no such path: {self.path}"})
            try:
                queries, topk, return_scores = parse_retrieve(self._read_body())
            except BadRequest as e:
                return self._send(400, {"error": str(e)})
            try:
                with lock:
                    results = backend.search(queries, topk)
            except SearchError as e:
                return self._send(500, {"error": str(e)})
            except Exception as e:  # a bug in a backend must not kill the server thread silently
                log.exception("search backend failed")
                return self._send(500, {"error": f"search backend failed: {type(e).__name__}: {e}"})
            self._send(200, {"result": [[_entry(p, return_scores) for p in ps] for ps in results]})

        def _read_body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                raise BadRequest("a Content-Length header is required")
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                raise BadRequest(f"body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
            return self.rfile.read(int(length))

        def _send(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                self.close_connection = True
                log.debug("client %s left before the answer", self.address_string())

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def _entry(p, return_scores: bool) -> dict[str, Any]:
    """One result entry in Search-R1's shape (title newlines become spaces so the split stays exact)."""
    doc = {"id": p.id, "contents": format_contents(p.title.replace("\n", " "), p.text)}
    return {"document": doc, "score": p.score} if return_scores else doc


def serve_search_main(
    corpus: str, host: str = "127.0.0.1", port: int = 8000, cache_dir: str = ".cache/bm25"
) -> int:
    """``rest-react serve-search``: a BM25 retriever over ``corpus`` until Ctrl-C; 0 on a clean stop."""
    from actors.search.bm25 import BM25Search

    try:
        backend = BM25Search(corpus, cache_dir)
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        server = make_server(backend, host, port)
    except OSError as e:
        print(f"error: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 2
    h, p = server.server_address[:2]
    # Ctrl-C and SIGTERM both stop it cleanly, even when started with SIGINT ignored
    # (a non-interactive shell's `cmd &` does that to its children).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"serving {len(backend)} passages at http://{h}:{p}/retrieve (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
    return 0
