"""A standard-library retriever server: the load benchmark's baseline.

The standard library's ``ThreadingHTTPServer`` (a thread per connection, a listen backlog
of 5) with every backend call under one lock; the same wire format, limits and error
messages as ``actors.search.server``, whose request parsing it shares. Not for use: it
resets connections under 32 concurrent clients on 2 cores (docs/history.md).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from actors.search.server import MAX_BODY_BYTES, BadRequest, _entry, parse_retrieve
from core.search import SearchBackend, SearchError


def make_stdlib_server(backend: SearchBackend, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """The baseline server over ``backend`` (call ``serve_forever`` in a thread; ``shutdown`` stops it)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        timeout = 60

        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/health":
                return self._send(404, {"error": f"no such path: {self.path}"})
            self._send(200, {"status": "ok", "passages": len(backend) if hasattr(backend, "__len__") else None})

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/retrieve":
                self.close_connection = True
                return self._send(404, {"error": f"no such path: {self.path}"})
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit() or int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                return self._send(400, {"error": "a Content-Length header of at most "
                                                 f"{MAX_BODY_BYTES} bytes is required"})
            try:
                queries, topk, return_scores = parse_retrieve(self.rfile.read(int(length)))
            except BadRequest as e:
                return self._send(400, {"error": str(e)})
            try:
                with lock:
                    results = backend.search(queries, topk)
            except SearchError as e:
                return self._send(500, {"error": str(e)})
            self._send(200, {"result": [[_entry(p, return_scores) for p in ps] for ps in results]})

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
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
