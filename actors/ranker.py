"""AI feedback: score the K samples of every LLM step and pick the best one.

A ranker sees one LLM step at a time together with a ``StepContext``: what the agent
had seen when it took that step (question, notes, snippets, past queries), rebuilt
from the trajectory by ``step_contexts``. Four rankers share the ``StepRanker``
interface (``actors/rankers/``): ``critic`` (label-free, the default), ``llm-judge``
(the paper's ranking prompt through an engine), ``oracle`` (gold facts, the toy
world's ablation ceiling) and ``random`` (the control). Only the oracle is ever
given gold; every other ranker gets ``gold=None``.

``RankerWorker`` is the plain class the ``RankerActor`` wraps: trajectories (as
dicts) in, the same trajectories out with ``scores`` and ``ranker_best`` on every
LLM step. Samples that do not parse always score lowest and are never best; ties go
to the sample with the lower mean NLL per token (the rollout's own preference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import ray

import prompts
from actors.engines.base import Engine
from agent.parsers import ParseError, Revise, parse_answer, parse_check, parse_summary
from agent.trajectory import Snippet, Step, Trajectory
from rest.config import EngineConfig, RankerConfig


@dataclass
class StepContext:
    """What the agent had seen just before one LLM step (``gold`` only ever for the oracle).

    ``snippets`` are the snippets the step may cite: for a summarize step the results
    of its own search, for every other step all snippets shown so far. ``past_queries``
    are the queries searched before the step, oldest first (for a summarize step the
    last one is the query being summarized). ``answer`` is the answer under check, for
    the relevance and grounding steps (citations included), else None.
    """

    question_id: str
    question: str
    step_index: int
    notes: list[prompts.Note]
    snippets: list[Snippet]
    past_queries: list[str]
    gold: dict | None
    answer: str | None = None


class StepRanker(Protocol):
    """Scores the K samples of one LLM step: one float per sample, higher = better."""

    name: str

    def score(self, step: Step, ctx: StepContext) -> list[float]: ...


def _chosen_parse(step: Step, parse, *args):
    """``parse(text, *args)`` of the sample the episode continued with, or None."""
    if step.chosen is None or not (0 <= step.chosen < len(step.samples)):
        return None
    try:
        return parse(step.samples[step.chosen].text, *args)
    except ParseError:
        return None


def step_contexts(traj: Trajectory, gold: dict | None = None) -> list[tuple[Step, StepContext]]:
    """For each LLM step of ``traj`` (in order), the step and what the agent had seen before it."""
    notes: list[prompts.Note] = []
    shown: list[Snippet] = []
    last: list[Snippet] = []
    queries: list[str] = []
    answer: str | None = None
    out: list[tuple[Step, StepContext]] = []
    for i, step in enumerate(traj.steps):
        if step.is_llm:
            ctx = StepContext(
                question_id=traj.question_id,
                question=traj.question,
                step_index=i,
                notes=list(notes),
                snippets=list(last if step.kind == "summarize" else shown),
                past_queries=list(queries),
                gold=gold,
                answer=answer if step.kind in ("relevance", "grounding") else None,
            )
            out.append((step, ctx))
        if step.kind == "search" and step.query is not None:
            queries.append(step.query)
            last = list(step.snippets)
            shown.extend(step.snippets)
        elif step.kind == "summarize" and queries:
            summary = _chosen_parse(step, parse_summary, [s.link_id for s in last])
            if summary is not None:
                notes.append(prompts.Note(query=queries[-1], summary=summary.text))
        elif step.kind == "answer":
            parsed = _chosen_parse(step, parse_answer, [s.link_id for s in shown])
            answer = parsed.text if parsed is not None else answer
        elif step.kind in ("relevance", "grounding"):
            verdict = _chosen_parse(step, parse_check, [s.link_id for s in shown])
            if isinstance(verdict, Revise):  # Keep() or an unparsed check leaves the answer as it was
                answer = verdict.answer.text
    return out


def make_ranker(cfg: RankerConfig, engine: Engine | None = None, revisions: Mapping[str, str] | None = None) -> StepRanker:
    """The ranker ``cfg.kind`` names; ``llm-judge`` uses ``engine`` or builds one from ``cfg.judge_*``
    (a hub id at the commit ``revisions``, the run's ``models.revisions``, records for it)."""
    from actors.rankers import Critic, LLMJudge, OracleRanker, RandomRanker

    if cfg.kind == "critic":
        return Critic()
    if cfg.kind == "random":
        return RandomRanker(cfg.seed)
    if cfg.kind == "oracle":
        return OracleRanker()
    if cfg.kind == "llm-judge":
        if engine is None:
            if not cfg.judge_model:
                raise ValueError("ranker.judge_model is empty: the llm-judge ranker needs a judge model")
            from actors.engines import make_engine

            engine = make_engine(judge_engine_config(cfg), revision=(revisions or {}).get(cfg.judge_model))
        return LLMJudge(engine, max_new_tokens=cfg.judge_max_new_tokens)
    raise ValueError(f"ranker.kind: unknown ranker {cfg.kind!r} (known: critic, llm-judge, oracle, random)")


def judge_engine_config(cfg: RankerConfig) -> EngineConfig:
    """The engine settings of the llm-judge ranker's own engine (``rest.plan`` sizes it from these)."""
    return EngineConfig(backend=cfg.judge_backend, model=cfg.judge_model)


def floor_unparseable(scores: Sequence[float], parse_ok: Sequence[bool]) -> list[float]:
    """``scores`` with every unparseable sample pushed below every parseable one."""
    out = [float(s) for s in scores]
    good = [s for s, ok in zip(out, parse_ok, strict=True) if ok]
    if good:
        floor = min(good) - 1.0
        out = [s if ok else min(s, floor) for s, ok in zip(out, parse_ok, strict=True)]
    return out


def best_sample(step: Step, scores: Sequence[float], allowed: Sequence[bool] | None = None) -> int | None:
    """Index of the highest-scoring allowed sample; ties -> lower mean NLL, then the earlier one.

    ``allowed`` defaults to ``step.parse_ok``; None when no sample is allowed.
    """
    ok = list(step.parse_ok if allowed is None else allowed)
    if len(scores) != len(step.samples) or len(ok) != len(step.samples):
        raise ValueError(
            f"best_sample: {len(scores)} scores and {len(ok)} parse flags for {len(step.samples)} samples"
        )

    def key(i: int) -> tuple[float, float, int]:
        nll = step.samples[i].mean_nll
        return (-scores[i], math.inf if math.isnan(nll) else nll, i)

    candidates = [i for i in range(len(step.samples)) if ok[i]]
    return min(candidates, key=key) if candidates else None


class RankerWorker:
    """Ranks every LLM step of whole trajectories (the plain class behind ``RankerActor``).

    ``gold`` maps question id -> question record (``hops``, ``gold_facts``, ``answers``)
    and is used by the oracle only: other rankers never receive it.
    """

    def __init__(self, cfg: RankerConfig, gold: Mapping[str, dict] | None = None, engine: Engine | None = None,
                 revisions: Mapping[str, str] | None = None):
        if cfg.kind == "oracle" and gold is None:
            raise ValueError("the oracle ranker needs gold question records (toy world only)")
        self.cfg = cfg
        self.gold = dict(gold) if cfg.kind == "oracle" and gold is not None else None
        self.ranker = make_ranker(cfg, engine, revisions)
        self.counts = {"trajectories": 0, "steps": 0, "agree_with_chosen": 0, "no_parseable": 0}

    def rank(self, trajectories: list[dict]) -> list[dict]:
        """The trajectories with ``scores``/``ranker_best`` filled on every LLM step."""
        trajs = [Trajectory.from_dict(d) for d in trajectories]
        items: list[tuple[Step, StepContext]] = []
        for t in trajs:
            items.extend(step_contexts(t, self._gold_of(t.question_id)))
        scored = self._score_all(items)
        for (step, _), scores in zip(items, scored, strict=True):
            if len(scores) != len(step.samples):
                raise RuntimeError(f"ranker {self.ranker.name} gave {len(scores)} scores for {len(step.samples)} samples")
            ok = step.parse_ok if len(step.parse_ok) == len(step.samples) else [False] * len(step.samples)
            step.scores = floor_unparseable(scores, ok)
            step.ranker_best = best_sample(step, step.scores, ok)
            self.counts["steps"] += 1
            self.counts["agree_with_chosen"] += int(step.ranker_best is not None and step.ranker_best == step.chosen)
            self.counts["no_parseable"] += int(step.ranker_best is None)
        self.counts["trajectories"] += len(trajs)
        return [t.to_dict() for t in trajs]

    def stats(self) -> dict:
        """Counters over this worker's lifetime (plus the judge's fallbacks, for llm-judge)."""
        extra = getattr(self.ranker, "stats", None)
        return {"ranker": self.ranker.name, **self.counts, **(extra() if callable(extra) else {})}

    def _gold_of(self, question_id: str) -> dict | None:
        if self.gold is None:
            return None
        if question_id not in self.gold:
            raise KeyError(f"no gold record for question {question_id!r} (the oracle needs one per question)")
        return self.gold[question_id]

    def _score_all(self, items: list[tuple[Step, StepContext]]) -> list[list[float]]:
        batch = getattr(self.ranker, "score_batch", None)
        if callable(batch):
            return batch(items)
        return [self.ranker.score(step, ctx) for step, ctx in items]


RankerActor = ray.remote(RankerWorker)
