"""Search speed: BM25 batched vs one query at a time, single-query latency, the HTTP
server's throughput seen from a second process, and the server under concurrent load.

Corpus: the largest shared one (wiki_multihop, 43,720 passages); queries: the HotpotQA
dev-eval questions. Every figure in one dict comes from one run, side by side, so the
ratios are meaningful on a noisy machine even when the absolute numbers are not.

The load test (``benchmarks.load_search``) drives LOAD_CLIENTS concurrent clients, one query
per request and no retries, against the FastAPI server and the standard-library baseline
(``benchmarks.stdlib_search_server``), alternating between them; it reports the
connection errors, p50/p99 latency and requests per second of each.

    python -m benchmarks.bench_search [--quick]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from actors.search.http import HttpSearch
from actors.search.server import make_server
from benchmarks.common import SEARCH_CORPUS, search_questions
from benchmarks.common import row as summary_row
from benchmarks.load_search import compare as compare_under_load

REPO = Path(__file__).resolve().parents[1]
TOPK = 3
HTTP_BATCH = 32
LOAD_CLIENTS = 64


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _client_in_subprocess(url: str, queries: list[str], batch: int) -> dict:
    """Run ``_client_loop`` in a fresh interpreter; its JSON result line."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_search", "--client", url, str(batch)],
        input=json.dumps(queries),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark client failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _client_loop(url: str, queries: list[str], batch: int) -> dict:
    """Send ``queries`` in requests of ``batch`` queries each; queries/s over the whole loop."""
    client = HttpSearch(url, timeout_s=30)
    client.search(queries[:1], TOPK)  # connect and warm up
    start = time.perf_counter()
    for i in range(0, len(queries), batch):
        client.search(queries[i : i + batch], TOPK)
    seconds = time.perf_counter() - start
    return {"queries": len(queries), "batch": batch, "seconds": seconds, "qps": len(queries) / seconds}


def run(quick: bool = False) -> dict:
    """Measure and return the figures (see module doc); ``quick`` uses fewer queries."""
    from actors.search.bm25 import BM25Search  # bm25s pulls in numba: imported when measured, not by the CLI

    n = 100 if quick else 500
    queries = search_questions(n)
    results: dict = {"corpus": SEARCH_CORPUS.name, "queries": len(queries), "topk": TOPK}

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        backend = BM25Search(SEARCH_CORPUS, cache)
        results["index_build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        backend = BM25Search(SEARCH_CORPUS, cache)
        results["index_load_s"] = time.perf_counter() - start
    results["passages"] = len(backend)
    results["build_vs_load"] = results["index_build_s"] / results["index_load_s"]

    backend.search(queries[:8], TOPK)  # warm up
    start = time.perf_counter()
    batched = backend.search(queries, TOPK)
    batched_s = time.perf_counter() - start
    latencies = []
    for q in queries:
        t = time.perf_counter()
        backend.search([q], TOPK)
        latencies.append(time.perf_counter() - t)
    if not any(batched):
        raise RuntimeError(f"no question found any passage in {SEARCH_CORPUS}: wrong corpus?")
    results["batched_qps"] = len(queries) / batched_s
    results["single_qps"] = len(queries) / sum(latencies)
    results["batched_vs_single"] = results["batched_qps"] / results["single_qps"]
    results["single_p50_ms"] = 1000 * statistics.median(latencies)
    results["single_p99_ms"] = 1000 * _percentile(latencies, 0.99)

    server = make_server(backend, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/retrieve"
    try:
        single = _client_in_subprocess(url, queries, 1)
        batch = _client_in_subprocess(url, queries, HTTP_BATCH)
    finally:
        server.shutdown()
        server.server_close()
    results["http_single_qps"] = single["qps"]
    results[f"http_batch{HTTP_BATCH}_qps"] = batch["qps"]
    results["http_single_vs_direct_single"] = single["qps"] / results["single_qps"]
    results[f"http_batch{HTTP_BATCH}_vs_http_single"] = batch["qps"] / single["qps"]

    per_client, rounds = (20, 1) if quick else (157, 3)  # full: 10,048 requests per server and round
    under_load = compare_under_load(backend, queries, LOAD_CLIENTS, per_client, rounds)
    results["load"] = {"clients": LOAD_CLIENTS, "requests_per_client": per_client, "rounds": rounds, **under_load}
    new, old = under_load["fastapi"], under_load["stdlib"]
    where = f"{SEARCH_CORPUS.name.split('.')[0]}, {results['passages']:,} passages"
    results["summary"] = [
        summary_row(f"BM25 over {where}: batched vs one by one (p99 {results['single_p99_ms']:.1f} ms)",
                    results["batched_qps"], results["single_qps"], "q/s"),
        summary_row(f"BM25 HTTP server from a second process: {HTTP_BATCH} queries per request vs 1",
                    batch["qps"], single["qps"], "q/s"),
        summary_row(f"server under {LOAD_CLIENTS}x{per_client}: FastAPI vs stdlib (conn errors "
                    f"{new['connection_errors_all_rounds']} vs {old['connection_errors_all_rounds']})",
                    new["requests_per_s"], old["requests_per_s"], "req/s"),
        summary_row(f"server under {LOAD_CLIENTS}x{per_client}: p99 latency, FastAPI vs stdlib",
                    new["p99_ms"], old["p99_ms"], "ms"),
    ]
    return results


def _print_table(results: dict) -> None:
    width = max(map(len, results))
    for key, value in results.items():
        if key == "summary":
            continue
        shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown:>12}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--client":
        print(json.dumps(_client_loop(sys.argv[2], json.loads(sys.stdin.read()), int(sys.argv[3]))))
    else:
        _print_table(run(quick="--quick" in sys.argv[1:]))
