"""A Search-R1-compatible retriever server over any ``SearchBackend``: FastAPI on uvicorn.

Endpoints (the wire format is documented in ``actors.search.http``):

- ``POST /retrieve`` ``{"queries": [str, ...], "topk": 3, "return_scores": false}``
  -> ``{"result": [[doc, ...] per query]}``; ``topk`` defaults to 3 and must be in 1..100.
- ``GET /health`` -> ``{"status": "ok", "passages": N}`` (N is null if the backend has no length).
- anything else -> 404; a bad request -> 400 ``{"error": "..."}``; a failing backend -> 500.

Why an event loop: a standard-library ``ThreadingHTTPServer`` (a backlog of 5, a thread
per connection; ``benchmarks.stdlib_search_server``) resets connections under 32
concurrent clients on 2 cores (docs/history.md). uvicorn accepts with a backlog of 2048
and holds thousands of keep-alive connections on one thread, without a thread each.
``benchmarks.load_search`` puts both under the same load (``make bench``).

The backend never runs on the event loop: each request's ``backend.search`` is queued to
a thread pool (``threads`` workers, default 1: bm25s is not documented thread-safe), whose
worker takes the next call as soon as one ends, while the loop reads and answers HTTP.
``rest-react serve-search --workers N`` runs the BM25 searches in N processes instead, each
holding the index, so that a retriever host's cores all search at once (threads cannot:
the GIL).
Requests are not gathered into batched backend calls: bm25s scores and sorts each query
on its own, so a gathered call costs more per query than single ones (docs/history.md),
and its requests all wait for the slowest. Binds 127.0.0.1 unless told otherwise.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations at
# runtime, and ``Request`` is imported inside ``make_app`` (the CLI does not pay for FastAPI).
import asyncio
import json
import logging
import signal
import socket
import sys
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from actors.search.http import format_contents
from core.search import SearchBackend, SearchError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
MAX_TOPK = 100
DEFAULT_TOPK = 3
#: an idle keep-alive connection is closed after this (the stdlib baseline's per-connection timeout)
KEEP_ALIVE_S = 60
#: connections waiting to be accepted (at 5, a burst of clients gets resets)
BACKLOG = 2048


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


def make_app(backend: SearchBackend, executor: ThreadPoolExecutor):
    """The FastAPI app of the module doc over ``backend``; backend calls run in ``executor``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    app = FastAPI(title="rest-react retriever", docs_url=None, redoc_url=None, openapi_url=None)

    def answer(status: int, obj: Any, close: bool = False) -> Response:
        headers = {"Connection": "close"} if close else None
        return Response(json.dumps(obj), status_code=status, media_type="application/json", headers=headers)

    @app.exception_handler(HTTPException)
    async def no_such_path(request: Request, exc: HTTPException) -> Response:
        # an unknown path or a wrong method (GET /retrieve): 404, as the stdlib baseline answers; the body is not read
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if exc.status_code in (404, 405):
            return answer(404, {"error": f"no such path: {path}"}, close=request.method == "POST")
        return answer(exc.status_code, {"error": str(exc.detail)})

    @app.get("/health")
    async def health() -> Response:
        passages = len(backend) if hasattr(backend, "__len__") else None
        return answer(200, {"status": "ok", "passages": passages})

    @app.post("/retrieve")
    async def retrieve(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            return answer(400, {"error": "a Content-Length header is required"}, close=True)
        if length is not None and int(length) > MAX_BODY_BYTES:
            return answer(400, {"error": f"body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit"}, close=True)
        body = bytearray()
        async for chunk in request.stream():  # a chunked body has no length up front: counted as it comes
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return answer(400, {"error": f"body is over the {MAX_BODY_BYTES}-byte limit"}, close=True)
        try:
            queries, topk, return_scores = parse_retrieve(bytes(body))
        except BadRequest as e:
            return answer(400, {"error": str(e)})
        try:
            results = await asyncio.get_running_loop().run_in_executor(executor, backend.search, queries, topk)
        except SearchError as e:
            return answer(500, {"error": str(e)})
        except Exception as e:  # a bug in a backend must not take the server down
            log.exception("search backend failed")
            return answer(500, {"error": f"search backend failed: {type(e).__name__}: {e}"})
        return answer(200, {"result": [[_entry(p, return_scores) for p in ps] for ps in results]})

    return app


def _entry(p, return_scores: bool) -> dict[str, Any]:
    """One result entry in Search-R1's shape (title newlines become spaces so the split stays exact)."""
    doc = {"id": p.id, "contents": format_contents(p.title.replace("\n", " "), p.text)}
    return {"document": doc, "score": p.score} if return_scores else doc


class SearchServer:
    """uvicorn serving ``make_app(backend)`` on a socket bound at construction.

    The socket is bound and listening here, so a taken port fails at once (``OSError``),
    port 0's pick is known before serving (``server_address``) and a client may connect
    before ``serve_forever`` starts. ``serve_forever`` runs the server
    in the calling thread until ``shutdown`` (from another thread) or, in the main
    thread, SIGINT/SIGTERM; ``server_close`` releases the socket and the worker thread.
    The method names are the standard library server's, so either serves the same callers.
    """

    def __init__(self, backend: SearchBackend, host: str = "127.0.0.1", port: int = 8000, threads: int = 1,
                 executor: Executor | None = None):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses its port at once
            self.socket.bind((host, port))
            self.socket.listen(BACKLOG)  # connections made before serve_forever wait in the backlog
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        if threads < 1:
            self.socket.close()
            raise ValueError(f"threads must be >= 1, got {threads}")
        # backend calls at once (see the module doc); the threads keep them off the event loop
        self.executor = executor or ThreadPoolExecutor(max_workers=threads, thread_name_prefix="search-backend")
        self.app = make_app(backend, self.executor)
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=5, backlog=BACKLOG)
        self.server = uvicorn.Server(config)
        self._stopped = threading.Event()
        self._stopped.set()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/retrieve"

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until ``shutdown``; ``poll_interval`` is accepted for the stdlib signature (uvicorn ticks at 0.1 s)."""
        self._stopped.clear()
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout_s: float = 30) -> None:
        """Stop a ``serve_forever`` running in another thread and wait (bounded) until it has returned."""
        self.server.should_exit = True
        self._stopped.wait(timeout_s)

    def server_close(self) -> None:
        self.socket.close()
        self.executor.shutdown(wait=isinstance(self.executor, ProcessPoolExecutor), cancel_futures=True)


def make_server(backend: SearchBackend, host: str = "127.0.0.1", port: int = 8000, threads: int = 1,
                executor: Executor | None = None) -> SearchServer:
    """A ready-to-run server (call ``serve_forever``); port 0 picks a free port (see ``server_address``).

    ``threads``: backend calls at once; more than 1 only for a thread-safe backend.
    ``executor``: where ``backend.search`` runs instead (``bm25_worker_pool``).
    """
    return SearchServer(backend, host, port, threads, executor)


#: the BM25 index of a worker process of ``bm25_worker_pool``
_worker_index = None


def _load_worker_index(corpus: str, cache_dir: str) -> None:
    global _worker_index
    from actors.search.bm25 import BM25Search

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server stops the pool

    _worker_index = BM25Search(corpus, cache_dir)


class WorkerBM25:
    """Stands in the server for the BM25 index every worker process of the pool holds: its
    ``search`` is pickled as a reference and runs in whichever worker takes the call."""

    def __init__(self, passages: int):
        self.passages = passages

    def __len__(self) -> int:
        return self.passages

    def search(self, queries: list[str], topk: int):
        if _worker_index is None:
            raise SearchError("this process holds no BM25 index (WorkerBM25 runs in bm25_worker_pool)")
        return _worker_index.search(queries, topk)


def bm25_worker_pool(corpus: str, cache_dir: str, workers: int, passages: int) -> tuple[WorkerBM25, Executor]:
    """``workers`` processes that each load the (already cached) BM25 index of ``corpus``, all
    started and warm on return, and the backend whose searches run in them."""
    import multiprocessing

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_load_worker_index, initargs=(str(corpus), str(cache_dir)))
    backend = WorkerBM25(passages)
    warm = [pool.submit(backend.search, ["warm up"], 1) for _ in range(workers)]  # each submit starts a worker
    for f in warm:
        f.result(timeout=600)
    return backend, pool


def serve_search_main(
    corpus: str, host: str = "127.0.0.1", port: int = 8000, cache_dir: str = ".cache/bm25", workers: int = 1
) -> int:
    """``rest-react serve-search``: a BM25 retriever over ``corpus`` until Ctrl-C; 0 on a clean stop.

    ``workers`` > 1: the searches run in that many processes (``bm25_worker_pool``).
    """
    from actors.search.bm25 import BM25Search

    try:
        backend = BM25Search(corpus, cache_dir)
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    executor = None
    if workers > 1:  # the index is built and cached above, once; each worker loads it
        backend, executor = bm25_worker_pool(corpus, cache_dir, workers, len(backend))
    try:
        server = make_server(backend, host, port, executor=executor)
    except OSError as e:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
        print(f"error: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 2
    h, p = server.server_address[:2]
    # Ctrl-C and SIGTERM both stop it cleanly, even when started with SIGINT ignored
    # (a non-interactive shell's `cmd &` does that to its children): uvicorn shuts down
    # gracefully, then raises the signal again, which lands here as KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    where = f", {workers} search processes" if workers > 1 else ""
    print(f"serving {len(backend)} passages at http://{h}:{p}/retrieve (Ctrl-C stops{where})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped", flush=True)
    return 0
