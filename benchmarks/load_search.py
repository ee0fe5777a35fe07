"""Load on a retriever: C concurrent clients x N requests each; connection errors, p50/p99, throughput.

Each client is a thread with its own keep-alive ``requests.Session`` (as each search
actor holds one) and sends one query per request, with no retries: every refused or
reset connection and every timeout is counted, not hidden by a client's backoff (the
agent's ``HttpSearch`` would retry them, at the cost of its backoff in latency). The
clients are spread over a few processes so that one client process's GIL is not what
is measured; they connect first, then all start at one instant.

``drive`` runs clients in this process (tests use it with small numbers); ``load``
spreads them over processes (the benchmark). ``expect`` (query -> the ids the backend
ranks first) checks every answer.

    python -m benchmarks.load_search [--clients 32] [--requests 100] [--rounds 3] [--server fastapi|stdlib|both]
        [--reconnect]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

from actors.search.server import make_server
from benchmarks.common import SEARCH_CORPUS, search_questions
from benchmarks.stdlib_search_server import make_stdlib_server

REPO = Path(__file__).resolve().parents[1]
TOPK = 3


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def drive(url: str, queries: Sequence[str], clients: int, requests_per_client: int, timeout_s: float = 30.0,
          expect: Mapping[str, list[str]] | None = None, start_at: float | None = None,
          reconnect: bool = False) -> dict:
    """``clients`` threads each send ``requests_per_client`` one-query requests to ``url``.

    Client ``c``'s ``i``-th query is ``queries[(c * requests_per_client + i) % len(queries)]``.
    Returns the counts (``ok``, ``connection_errors``, ``timeouts``, ``http_errors``,
    ``mismatches``: answers whose ids differ from ``expect``), ``latencies_ms`` of the
    answered requests and ``seconds`` from the start to the last answer.
    """
    counts = {"ok": 0, "connection_errors": 0, "timeouts": 0, "http_errors": 0, "mismatches": 0}
    latencies: list[float] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    go = threading.Event()
    sessions = [requests.Session() for _ in range(clients)]
    headers = {"Connection": "close"} if reconnect else None  # a new connection for every request

    def client(c: int) -> None:
        session = sessions[c]
        mine = {k: 0 for k in counts}
        lat = []
        try:
            session.get(url.rsplit("/", 1)[0] + "/health", timeout=timeout_s)  # connect before the start
        except requests.RequestException:
            pass  # counted below, when the measured requests fail too
        ready.wait()
        go.wait()
        for i in range(requests_per_client):
            q = queries[(c * requests_per_client + i) % len(queries)]
            t0 = time.perf_counter()
            try:
                resp = session.post(url, json={"queries": [q], "topk": TOPK}, timeout=timeout_s, headers=headers)
            except requests.Timeout:
                mine["timeouts"] += 1
                continue
            except requests.ConnectionError:
                mine["connection_errors"] += 1
                continue
            lat.append(1000 * (time.perf_counter() - t0))
            if resp.status_code != 200:
                mine["http_errors"] += 1
            elif expect is not None and [d["id"] for d in resp.json()["result"][0]] != expect[q]:
                mine["mismatches"] += 1
            else:
                mine["ok"] += 1
        with lock:
            for k, v in mine.items():
                counts[k] += v
            latencies.extend(lat)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    start = time.perf_counter()
    go.set()
    for t in threads:
        t.join(timeout_s * (requests_per_client + 1))
    seconds = time.perf_counter() - start
    for s in sessions:
        s.close()
    return {"clients": clients, "requests": clients * requests_per_client, **counts, "seconds": seconds,
            "latencies_ms": latencies}


def summarize(result: dict) -> dict:
    """``result`` without the raw latencies, with p50/p99/max latency and answered requests per second."""
    lat = result["latencies_ms"]
    out = {k: v for k, v in result.items() if k != "latencies_ms"}
    out.update(p50_ms=percentile(lat, 0.5), p99_ms=percentile(lat, 0.99), max_ms=max(lat, default=float("nan")),
               requests_per_s=result["ok"] / result["seconds"] if result["seconds"] > 0 else float("nan"))
    return out


def load(url: str, queries: Sequence[str], clients: int = 32, requests_per_client: int = 100, procs: int = 4,
         timeout_s: float = 30.0, reconnect: bool = False, expect: Mapping[str, list[str]] | None = None) -> dict:
    """``drive`` spread over ``procs`` client processes that start together; the merged ``summarize``."""
    procs = max(1, min(procs, clients))
    start_at = time.time() + 5.0  # every process imported and connected by then
    children = []
    tmp = tempfile.mkdtemp(prefix="load-search-")
    for p in range(procs):
        share = clients // procs + (p < clients % procs)
        first = sum(clients // procs + (i < clients % procs) for i in range(p)) * requests_per_client
        mine = list(queries[first:]) + list(queries[:first])  # each process its own stretch of queries
        spec = {"url": url, "queries": mine, "clients": share, "requests": requests_per_client,
                "timeout_s": timeout_s, "start_at": start_at, "reconnect": reconnect, "expect": expect}
        spec_file = Path(tmp) / f"client-{p}.json"
        spec_file.write_text(json.dumps(spec))
        children.append(subprocess.Popen([sys.executable, "-m", "benchmarks.load_search", "--client", str(spec_file)],
                                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    merged: dict = {"clients": 0, "requests": 0, "ok": 0, "connection_errors": 0, "timeouts": 0,
                    "http_errors": 0, "mismatches": 0, "seconds": 0.0, "latencies_ms": []}
    for child in children:
        out, err = child.communicate(timeout=timeout_s * (requests_per_client + 2) + 60)
        if child.returncode != 0:
            raise RuntimeError(f"load client failed: {err.strip().splitlines()[-1:] or child.returncode}")
        part = json.loads(out.strip().splitlines()[-1])
        for k, v in part.items():
            merged[k] = max(merged[k], v) if k == "seconds" else merged[k] + v
    shutil.rmtree(tmp, ignore_errors=True)
    merged["procs"] = procs
    return summarize(merged)


def _client_main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    print(json.dumps(drive(spec["url"], spec["queries"], spec["clients"], spec["requests"], spec["timeout_s"],
                           start_at=spec["start_at"], reconnect=spec["reconnect"], expect=spec.get("expect"))))


def compare(backend, queries: Sequence[str], clients: int, requests_per_client: int, rounds: int = 1,
            which: Sequence[str] = ("fastapi", "stdlib"), procs: int = 4, reconnect: bool = False) -> dict[str, dict]:
    """``load`` on each server of ``which`` over ``backend``, alternating for ``rounds`` rounds (the
    machine's load drifts; alternation spreads it over both). Per server: the round of median
    throughput, with every round's requests/s and p99, and the connection errors of all rounds."""
    runs: dict[str, list[dict]] = {name: [] for name in which}
    for _ in range(rounds):
        for name in which:
            server = make_server(backend, "127.0.0.1", 0) if name == "fastapi" else make_stdlib_server(backend)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                url = f"http://127.0.0.1:{server.server_address[1]}/retrieve"
                runs[name].append(load(url, queries, clients, requests_per_client, procs, reconnect=reconnect))
            finally:
                server.shutdown()
                server.server_close()
                thread.join(30)
    out = {}
    for name, rs in runs.items():
        mid = sorted(rs, key=lambda r: r["requests_per_s"])[len(rs) // 2]
        out[name] = {**mid, "rounds": len(rs), "requests_per_s_all": [r["requests_per_s"] for r in rs],
                     "p99_ms_all": [r["p99_ms"] for r in rs],
                     "connection_errors_all_rounds": sum(r["connection_errors"] for r in rs),
                     "failed_all_rounds": sum(r["requests"] - r["ok"] for r in rs)}
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        _client_main(sys.argv[2])
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=100, help="requests per client")
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--server", choices=("fastapi", "stdlib", "both"), default="both")
    parser.add_argument("--reconnect", action="store_true", help="a new connection for every request")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per server (the median is shown)")
    args = parser.parse_args()
    from actors.search.bm25 import BM25Search

    which = ("fastapi", "stdlib") if args.server == "both" else (args.server,)
    backend = BM25Search(SEARCH_CORPUS, REPO / ".cache" / "bm25")
    results = compare(backend, search_questions(500), args.clients, args.requests, args.rounds, which, args.procs,
                      args.reconnect)
    for name, r in results.items():
        print(f"{name:8s} {r['clients']} clients x {args.requests}: {r['ok']}/{r['requests']} ok, "
              f"{r['connection_errors']} connection errors, {r['timeouts']} timeouts, {r['http_errors']} HTTP errors; "
              f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.0f} ms, "
              f"{r['requests_per_s']:.0f} req/s (rounds: {', '.join(f'{x:.0f}' for x in r['requests_per_s_all'])})",
              flush=True)
