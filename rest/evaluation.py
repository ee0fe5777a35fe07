"""Score trajectories that sampler actors produced into the same ``EvalResult`` that ``rest-react eval`` writes.

The driver evaluates on actors (questions split across short-lived samplers holding
the checkpoint), so ``evals.qa.evaluate``, which runs its own engine, does not fit;
this module does the scoring half of it with the same metrics and the same record
shape, so ``score.json`` / ``predictions.jsonl`` mean the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

from agent.trajectory import Trajectory
from core.config import Config, SearchConfig
from evals.datasets import Dataset
from evals.qa import JUDGE_DETERMINISTIC, EvalResult, bm25_info, http_info, score_trajectories


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
    agent = dataclasses.replace(cfg.agent, temperature=cfg.eval.temperature, k_samples=cfg.eval.k_samples)
    return score_trajectories(
        questions, [by_question[q.id] for q in questions], dataset=data.name, model=model,
        judge=JUDGE_DETERMINISTIC, search=search_info(cfg.search), agent=agent,
        runner_stats=trajectory_counters(trajectories), seconds=seconds, extras=data.extras,
    )
