"""Client for a Search-R1-compatible retriever: ``POST /retrieve``.

The wire format is Search-R1's (``search_r1/search/retrieval_server.py``)::

    request:  {"queries": ["q1", ...], "topk": 3, "return_scores": true}
    response: {"result": [[doc, ...], ...]}                         one list per query
              doc = {"id": "...", "contents": "\\"<title>\\"\\n<text>"}
              with return_scores each entry is {"document": doc, "score": 1.23}

This client always asks for scores but reads both entry shapes, since some servers
ignore ``return_scores``. ``contents`` is split back into title and text; a doc
without a leading quoted-title line keeps everything as text (title ""). A doc
without ``id`` gets id "".

Every request has a timeout; connection errors, timeouts and 5xx answers are
retried a bounded number of times with exponential backoff (capped at
``max_backoff_s``, so a restarting server is waited for at a steady pace); then one
``SearchError`` line names the URL and the cause. A 4xx or a malformed answer fails at
once (it would not get better by asking again). ``stats`` counts requests, retries
and give-ups, so a flaky server shows up in numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import requests

from core.search import Passage, SearchError


def format_contents(title: str, text: str) -> str:
    """Search-R1's ``contents`` field: the title in double quotes, a newline, the text."""
    return f'"{title}"\n{text}'


def split_contents(contents: str) -> tuple[str, str]:
    """Inverse of ``format_contents``; no quoted first line means title "" and all text."""
    first, sep, rest = contents.partition("\n")
    if sep and len(first) >= 2 and first.startswith('"') and first.endswith('"'):
        return first[1:-1], rest
    return "", contents


class HttpSearch:
    """A ``SearchBackend`` that asks a Search-R1-compatible HTTP retriever (see module doc).

    Holds one ``requests.Session`` (keep-alive), so use one instance per thread.
    """

    def __init__(
        self, url: str, timeout_s: float = 10, retries: int = 3, backoff_s: float = 0.2, max_backoff_s: float = 5.0
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise SearchError(f"search url must start with http:// or https://, got {url!r}")
        if timeout_s <= 0 or retries < 1 or backoff_s < 0 or max_backoff_s < backoff_s:
            raise SearchError(
                f"bad HttpSearch settings: timeout_s={timeout_s} (> 0), retries={retries} (>= 1), "
                f"backoff_s={backoff_s} (>= 0), max_backoff_s={max_backoff_s} (>= backoff_s)"
            )
        self.url = url
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.stats = {"requests": 0, "retries": 0, "gave_up": 0}
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` passages per query from the server, best first; one request for all."""
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise SearchError("queries must be a list of strings")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise SearchError(f"topk must be a positive integer, got {topk!r}")
        queries = list(queries)
        if not queries:
            return []
        body = self._post({"queries": queries, "topk": topk, "return_scores": True})
        return self._parse(body, len(queries))

    def _post(self, payload: dict[str, Any]) -> bytes:
        """POST with bounded retries; the raw body of the first 2xx answer."""
        cause = "no attempt made"
        self.stats["requests"] += 1
        for attempt in range(self.retries):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                resp = self._session.post(self.url, json=payload, timeout=self.timeout_s)
            except requests.Timeout:
                cause = f"timed out after {self.timeout_s:g}s"
                continue
            except requests.ConnectionError as e:
                cause = _connection_cause(e)
                continue
            if resp.status_code >= 500:
                cause = f"HTTP {resp.status_code}{_error_detail(resp)}"
                continue
            if resp.status_code >= 400:
                raise SearchError(
                    f"search server {self.url} refused the request: HTTP {resp.status_code}{_error_detail(resp)}"
                )
            return resp.content
        self.stats["gave_up"] += 1
        raise SearchError(f"search server {self.url} unreachable after {self.retries} tries: {cause}")

    def _parse(self, body: bytes, n_queries: int) -> list[list[Passage]]:
        bad = f"search server {self.url} sent a malformed answer"
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise SearchError(f"{bad}: not JSON ({body[:60]!r})") from None
        result = data.get("result") if isinstance(data, dict) else None
        if not isinstance(result, list):
            raise SearchError(f'{bad}: expected {{"result": [...]}}')
        if len(result) != n_queries:
            raise SearchError(f"{bad}: {len(result)} result lists for {n_queries} queries")
        out = []
        for qi, docs in enumerate(result):
            if not isinstance(docs, list):
                raise SearchError(f"{bad}: result[{qi}] is not a list")
            out.append([_passage(entry, f"{bad}: result[{qi}][{di}]") for di, entry in enumerate(docs)])
        return out


def _passage(entry: Any, where: str) -> Passage:
    """One result entry, either ``doc`` or ``{"document": doc, "score": s}``, as a Passage."""
    score: Any = 0.0
    if isinstance(entry, dict) and "document" in entry:
        score = entry.get("score", 0.0)
        entry = entry["document"]
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise SearchError(f"{where}: score is not a number")
    if not isinstance(entry, dict) or not isinstance(entry.get("contents"), str):
        raise SearchError(f'{where}: expected a document {{"id", "contents"}}')
    doc_id = entry.get("id", "")
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise SearchError(f"{where}: id is not a string or integer")
    title, text = split_contents(entry["contents"])
    return Passage(id=str(doc_id), title=title, text=text, score=float(score))


def _connection_cause(e: requests.ConnectionError) -> str:
    """A short cause for a connection failure, e.g. 'connection refused'."""
    text = str(e)
    for needle, short in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "host name not found"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "server closed the connection"),
    ):
        if needle in text:
            return short
    return f"connection error ({text.splitlines()[0][:120] if text else type(e).__name__})"


def _error_detail(resp: requests.Response) -> str:
    """': <the server's error message>' when the body is {"error": ...}, else ''."""
    try:
        message = resp.json().get("error")
    except (ValueError, AttributeError):
        return ""
    return f": {str(message)[:200]}" if message else ""
