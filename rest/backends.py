"""Build the engine and search backend a config names, preparing what they need.

Shared by every command that runs the agent (``episode``, ``eval``, the sampler
actors), so a config means the same thing everywhere.
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import prompts
from actors.engines import make_engine
from actors.search import make_search
from core.config import Config, ConfigError
from core.engine import Engine
from core.search import SearchBackend, Snippet
from toyworld.modelzoo import ensure_random_model
from toyworld.world import with_world_paths


def _tokenizer_texts(cfg: Config, n_passages: int = 3000) -> Iterator[str]:
    """Text for a random model's tokenizer: corpus passages plus every prompt form."""
    if cfg.search.corpus:
        opener = gzip.open if cfg.search.corpus.endswith(".gz") else open
        with opener(cfg.search.corpus, "rt", encoding="utf-8") as f:
            for line in itertools.islice(f, n_passages):
                doc = json.loads(line)
                yield f'{doc.get("title", "")}\n{doc.get("text", "")}'
    notes = [prompts.Note(query="example query", summary="A fact [link_id=1].")]
    snippets = [Snippet(link_id=1, doc_id="d", title="Title", text="Some text.")]
    for style in ("fewshot", "zeroshot"):
        yield prompts.decision_prompt("Who is it?", notes, 3, style)
        yield prompts.summarize_prompt("Who is it?", "example query", snippets, style)
        yield prompts.answer_prompt("Who is it?", notes, style)
        yield prompts.relevance_prompt("Who is it?", "An answer [link_id=1]", style)
        yield prompts.grounding_prompt("Who is it?", "An answer [link_id=1]", notes, style)


def build_engine(cfg: Config) -> Engine:
    """The policy engine; a ``random_init`` model is created on first use.

    With ``world.dir`` set, an empty engine.model means the toy world's L-warm
    (``toyworld.world.with_world_paths``; the world is built on first use). A model set
    explicitly needs no world: a closed-book eval must not build one for a corpus it never reads.
    A hub id loads the commit the run recorded in ``models.revisions`` (``core.hub``).
    """
    if cfg.world.dir and not cfg.engine.model:
        cfg = with_world_paths(cfg)
    model = cfg.engine.model
    if not model:
        raise ConfigError(f"{cfg.source}: engine.model: required")
    if cfg.engine.random_init and not (Path(model) / "config.json").exists():
        ensure_random_model(model, cfg.engine.random_init, _tokenizer_texts(cfg), seed=cfg.agent.seed)
    return make_engine(cfg.engine, revision=cfg.models.revisions.get(model))


def build_search(cfg: Config) -> SearchBackend:
    """The search backend; with ``world.dir`` set, an empty bm25 corpus means the toy world's corpus."""
    if cfg.world.dir and cfg.search.backend == "bm25" and not cfg.search.corpus:
        cfg = with_world_paths(cfg)
    if cfg.search.backend == "bm25" and not cfg.search.corpus:
        raise ConfigError(f"{cfg.source}: search.corpus: required by the bm25 backend")
    return make_search(cfg.search)
