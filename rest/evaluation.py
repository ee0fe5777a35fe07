"""The driver's evaluation: a model's questions on eval sampler actors, scored into the ``EvalResult``
that ``rest-react eval`` writes.

The driver evaluates on actors (questions split across eval samplers that one eval phase
starts once and moves from checkpoint to checkpoint, ``EvalPools``), so ``evals.qa.evaluate``,
which runs its own engine, does not fit; this module does the scoring half of it with the same
metrics and the same record shape, so ``score.json`` / ``predictions.jsonl`` mean the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from agent.trajectory import Question, Trajectory
from core.config import Config, SearchConfig
from evals.datasets import Dataset
from evals.qa import (
    JUDGE_DETERMINISTIC,
    EvalResult,
    apply_llm_judge,
    bm25_info,
    http_info,
    score_trajectories,
)
from rest.cluster import RunCluster
from rest.workers import SamplerPool, make_tasks


def search_info(cfg: SearchConfig) -> dict[str, Any]:
    """Where the agent searched, labelled like ``evals.qa.describe_search`` does."""
    return bm25_info(cfg.corpus) if cfg.backend == "bm25" else http_info(cfg.url)


def trajectory_counters(trajectories: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Episodes, LLM steps, samples, generated tokens and unparsed samples of trajectory dicts."""
    c = Counter(episodes=len(trajectories))
    for t in trajectories:
        for s in t["steps"]:
            if not s.get("samples"):
                continue
            c["llm_steps"] += 1
            c["samples"] += len(s["samples"])
            c["generated_tokens"] += sum(x["n_tokens"] for x in s["samples"])
            c["parse_failures"] += list(s.get("parse_ok", [])).count(False)
    return {k: c[k] for k in ("episodes", "llm_steps", "samples", "generated_tokens", "parse_failures")}


def score(data: Dataset, trajectories: Sequence[dict[str, Any]], cfg: Config, model: str,
          seconds: float) -> EvalResult:
    """The deterministic-judge result of ``trajectories`` (one per question of ``data``, any order)."""
    by_question = {t["question_id"]: Trajectory.from_dict(t) for t in trajectories}
    questions = [q for q in data.questions if q.id in by_question]
    if len(questions) != len(by_question):
        raise ValueError(f"{data.name}: trajectories for questions not in the dataset")
    agent = eval_config(cfg).agent
    return score_trajectories(
        questions, [by_question[q.id] for q in questions], dataset=data.name, model=model,
        judge=JUDGE_DETERMINISTIC, search=search_info(cfg.search), agent=agent,
        runner_stats=trajectory_counters(trajectories), seconds=seconds, extras=data.extras,
    )


def eval_config(cfg: Config) -> Config:
    """``cfg`` as the eval samplers run it: the eval temperature and samples, continuing by perplexity."""
    out = dataclasses.replace(cfg)
    out.agent = dataclasses.replace(cfg.agent, temperature=cfg.eval.temperature, k_samples=cfg.eval.k_samples)
    out.rest = dataclasses.replace(cfg.rest, continue_with="perplexity")
    return out


def eval_questions(datasets: Sequence[Dataset]) -> list[Question]:
    """Every question of ``datasets``, its id prefixed by its dataset's name (ids are unique per dataset only)."""
    return [Question(id=f"{d.name}::{q.id}", question=q.question) for d in datasets for q in d.questions]


class _ModelPool:
    """One eval sampler pool and the checkpoint its replicas hold (a replacement starts holding it too)."""

    def __init__(self, cluster: RunCluster, cfg: Config, questions: Sequence[Question], path: str, size: int):
        self.path = path
        self.pool = cluster.eval_pool(cfg, questions, lambda: self.path, "eval", size)
        self.timeout_s = cfg.rest.call_timeout_s

    def switch(self, path: str) -> None:
        """Every replica holds ``path`` (``Sampler.use_model``); one that fails to is replaced by a fresh one."""
        if path == self.path:
            return
        self.path = path
        refs = [actor.use_model.remote(path) for actor in self.pool.actors]
        for slot, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=self.timeout_s)
            except (RayError, GetTimeoutError):
                self.pool.replace(slot)


class EvalPools:
    """The eval sampler pools of one eval phase over ``datasets``, lent to its models in turn.

    A replica's start (a Ray worker importing torch and transformers before it loads a model)
    costs more than evaluating a small model; so a phase starts each pool once, and each model
    borrows one, moves its replicas to its checkpoint and hands it back. A pool whose model
    failed is shut down rather than lent again. The pools run ``cfg`` as ``eval_config`` makes
    it (``self.cfg``), with the rollout's sampler count, fewer when the questions make fewer tasks.
    """

    def __init__(self, cluster: RunCluster, cfg: Config, datasets: Sequence[Dataset]):
        self.cluster, self.cfg = cluster, eval_config(cfg)
        self.questions = eval_questions(datasets)
        tasks = -(-len(self.questions) // self.cfg.rest.questions_per_task)
        self.size = max(1, min(self.cfg.rest.num_samplers, tasks))
        self._free: list[_ModelPool] = []
        self._all: list[_ModelPool] = []
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self, path: str) -> Iterator[SamplerPool]:
        """A pool whose replicas hold ``path``: a free one switched to it, else a new one."""
        with self._lock:
            lent = next((p for p in self._free if p.path == path), self._free[0] if self._free else None)
            if lent is not None:
                self._free.remove(lent)
        if lent is None:
            lent = _ModelPool(self.cluster, self.cfg, self.questions, path, self.size)
            with self._lock:
                self._all.append(lent)
        try:
            lent.switch(path)
            yield lent.pool
        except BaseException:
            lent.pool.shutdown()
            raise
        with self._lock:
            self._free.append(lent)

    def close(self) -> None:
        """Shut every pool down (safe twice)."""
        with self._lock:
            pools, self._all, self._free = self._all, [], []
        for lent in pools:
            lent.pool.shutdown()

    def __enter__(self) -> EvalPools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def evaluate_model(pools: EvalPools, model: str, path: str, datasets: Sequence[Dataset],
                   on_done: Callable[[int], None] = lambda n: None) -> list[EvalResult]:
    """``model`` (its checkpoint at ``path``) on ``datasets``: the questions split into tasks across one of
    the phase's eval pools (greedy, searching the whole corpus), one result per dataset, scored by exact
    match and, with ``eval.judge=llm``, re-scored by the run's Check_Answer judge."""
    cfg = pools.cfg
    questions = eval_questions(datasets)
    tasks = make_tasks([q.id for q in questions], cfg.rest.questions_per_task, lambda i: cfg.agent.seed)
    t0 = time.perf_counter()
    with pools.borrow(path) as pool:
        trajectories = pool.map(tasks, 0, 1, on_result=lambda _t, out: on_done(len(out)))
    seconds = time.perf_counter() - t0
    results = []
    for d in datasets:
        prefix = f"{d.name}::"
        mine = [{**t, "question_id": t["question_id"][len(prefix):]} for t in trajectories
                if t["question_id"].startswith(prefix)]
        result = score(d, mine, cfg, model, seconds)
        results.append(apply_llm_judge(result, pools.cluster.judge) if cfg.eval.judge == "llm" else result)
    return results
