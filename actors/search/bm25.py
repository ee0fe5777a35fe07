"""BM25 search over a local passage corpus, with the index cached on disk.

The corpus is JSON Lines (optionally gzip) of ``{"id", "title", "text"}``; extra
keys are ignored. Each passage is indexed as its title plus its text, lower-cased,
split into words, English stopwords removed and stemmed (Snowball English via
PyStemmer), and scored with ``bm25s`` (Lucene BM25, k1=1.5, b=0.75).

Building the index is the slow part (seconds for 40k passages on one core), so it
is built once per corpus *content*: the cache directory is named after the sha256 of
the corpus file's bytes, written to a temporary directory and renamed into place,
so a crash or a concurrent builder never leaves a half-written index behind.

Not thread-safe: callers that share one instance across threads (the HTTP server)
serialise ``search`` calls with a lock.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import bm25s
import Stemmer

from core.io import parse_object
from core.search import Passage, SearchError

log = logging.getLogger(__name__)

#: bump when tokenisation or the saved layout changes, so old caches are not reused
INDEX_FORMAT = "bm25s-en-snowball-v1"
_META = "meta.json"


def read_corpus(path: str | os.PathLike) -> tuple[list[Passage], str]:
    """Parse a JSONL(.gz) passage corpus; return the passages and the sha256 of the file's bytes.

    Every problem is a one-line ``SearchError`` naming the file (and line, when there is one).
    """
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"corpus file not found: {path}")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise SearchError(f"{path}: not a valid gzip file ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SearchError(f"{path}: not UTF-8 text (byte {e.start})") from None

    passages: list[Passage] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        passage = _parse_line(line, f"{path}:{lineno}")
        if passage.id in seen:
            raise SearchError(f"{path}:{lineno}: duplicate passage id {passage.id!r}")
        seen.add(passage.id)
        passages.append(passage)
    if not passages:
        raise SearchError(f"{path}: corpus is empty (no passages)")
    return passages, digest


def _parse_line(line: str, where: str) -> Passage:
    row = parse_object(line, where, SearchError)
    for key in ("id", "title", "text"):
        if key not in row:
            raise SearchError(f"{where}: missing key {key!r} (need id, title, text)")
    doc_id = row["id"]
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise SearchError(f"{where}: 'id' must be a string or an integer, got {doc_id!r}")
    for key in ("title", "text"):
        if not isinstance(row[key], str):
            raise SearchError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
    return Passage(id=str(doc_id), title=row["title"], text=row["text"])


class BM25Search:
    """A ``SearchBackend`` answering from a BM25 index over a local corpus (see module doc)."""

    def __init__(self, corpus: str | os.PathLike, cache_dir: str | os.PathLike = ".cache/bm25"):
        self.corpus_path = Path(corpus)
        self.passages, self.corpus_sha256 = read_corpus(self.corpus_path)
        self._by_id = {p.id: i for i, p in enumerate(self.passages)}
        self._stemmer = Stemmer.Stemmer("english")
        self.index_dir = Path(cache_dir) / f"{self.corpus_sha256}-{INDEX_FORMAT}"
        #: True when this instance loaded a previously built index instead of building one
        self.loaded_from_cache = False
        self._retriever = self._load_cached()
        if self._retriever is None:
            self._retriever = self._build_and_cache()
        else:
            self.loaded_from_cache = True

    def __len__(self) -> int:
        return len(self.passages)

    def get(self, doc_id: str) -> Passage:
        """The passage with this id (score 0); ``KeyError`` if the corpus has none."""
        try:
            return self.passages[self._by_id[doc_id]]
        except KeyError:
            raise KeyError(f"no passage with id {doc_id!r} in {self.corpus_path}") from None

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` passages per query, best first, all queries scored in one bm25s call.

        Only passages sharing at least one term with the query are returned, so a query
        that is empty, all stopwords or all unknown words gets ``[]``.
        """
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise SearchError("queries must be a list of strings")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise SearchError(f"topk must be a positive integer, got {topk!r}")
        results: list[list[Passage]] = [[] for _ in queries]
        if not queries:
            return results
        token_ids = self._query_token_ids(queries)
        todo = [i for i, ids in enumerate(token_ids) if ids]
        if not todo:
            return results
        k = min(topk, len(self.passages))
        docs, scores = self._retriever.retrieve(
            [token_ids[i] for i in todo], k=k, show_progress=False, n_threads=0
        )
        for row, qi in enumerate(todo):
            for doc, score in zip(docs[row].tolist(), scores[row].tolist(), strict=True):
                if score > 0:
                    p = self.passages[doc]
                    results[qi].append(Passage(p.id, p.title, p.text, float(score)))
        return results

    # -- tokenisation: one function for passages and queries, so both sides always agree

    def _tokenize(self, texts: list[str], return_ids: bool):
        return bm25s.tokenize(
            texts, stopwords="en", stemmer=self._stemmer, return_ids=return_ids, show_progress=False
        )

    def _query_token_ids(self, queries: Sequence[str]) -> list[list[int]]:
        """Stemmed query terms mapped to index ids; terms the corpus never uses are dropped."""
        vocab = self._retriever.vocab_dict
        stems = self._tokenize(list(queries), return_ids=False)
        return [[vocab[s] for s in q if s and s in vocab] for q in stems]

    # -- the on-disk cache

    def _load_cached(self) -> bm25s.BM25 | None:
        meta_path = self.index_dir / _META
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("passages") != len(self.passages):
                raise ValueError(f"it holds {meta.get('passages')} passages, the corpus {len(self.passages)}")
            retriever = bm25s.BM25.load(self.index_dir, show_progress=False)
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable BM25 cache %s: %s", self.index_dir, e)
            return None
        log.info("loaded BM25 index of %d passages from %s", len(self.passages), self.index_dir)
        return retriever

    def _build_and_cache(self) -> bm25s.BM25:
        texts = [f"{p.title}\n{p.text}" for p in self.passages]
        retriever = bm25s.BM25()
        retriever.index(self._tokenize(texts, return_ids=True), show_progress=False)
        parent = self.index_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=parent))
        try:
            retriever.save(tmp, show_progress=False)
            meta = {
                "format": INDEX_FORMAT,
                "corpus": str(self.corpus_path),
                "corpus_sha256": self.corpus_sha256,
                "passages": len(self.passages),
                "bm25s": bm25s.__version__,
            }
            (tmp / _META).write_text(json.dumps(meta, indent=1))
            if self.index_dir.exists():  # a stale or broken cache: replace it
                shutil.rmtree(self.index_dir, ignore_errors=True)
            try:
                os.rename(tmp, self.index_dir)
            except OSError:  # another process renamed its identical index first
                log.info("BM25 cache %s appeared while building; keeping it", self.index_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("built BM25 index of %d passages into %s", len(self.passages), self.index_dir)
        return retriever
