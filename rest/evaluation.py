"""The driver's evaluation: a model's questions on eval sampler actors, scored into the ``EvalResult``
that ``rest-react eval`` writes.

The driver evaluates on actors (questions split across short-lived samplers holding
the checkpoint), so ``evals.qa.evaluate``, which runs its own engine, does not fit;
this module does the scoring half of it with the same metrics and the same record
shape, so ``score.json`` / ``predictions.jsonl`` mean the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

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
from rest.workers import make_tasks


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


def evaluate_model(cluster: RunCluster, cfg: Config, model: str, path: str, datasets: Sequence[Dataset],
                   on_done: Callable[[int], None] = lambda n: None) -> list[EvalResult]:
    """``model`` (its checkpoint at ``path``) on ``datasets``: the questions split into tasks across a
    short-lived pool of eval samplers (greedy, searching the whole corpus), one result per dataset,
    scored by exact match and, with ``eval.judge=llm``, re-scored by the run's Check_Answer judge."""
    run_cfg = eval_config(cfg)
    questions = [Question(id=f"{d.name}::{q.id}", question=q.question) for d in datasets for q in d.questions]
    tasks = make_tasks([q.id for q in questions], run_cfg.rest.questions_per_task, lambda i: run_cfg.agent.seed)
    t0 = time.perf_counter()
    pool = cluster.eval_pool(run_cfg, questions, path, f"eval-{model}", len(tasks))
    try:
        trajectories = pool.map(tasks, 0, 1, on_result=lambda _t, out: on_done(len(out)))
    finally:
        pool.shutdown()
    seconds = time.perf_counter() - t0
    results = []
    for d in datasets:
        prefix = f"{d.name}::"
        mine = [{**t, "question_id": t["question_id"][len(prefix):]} for t in trajectories
                if t["question_id"].startswith(prefix)]
        result = score(d, mine, cfg, model, seconds)
        results.append(apply_llm_judge(result, cluster.judge) if cfg.eval.judge == "llm" else result)
    return results
