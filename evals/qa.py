"""Evaluate an agent on a question set with the deterministic judge, and record every answer.

``evaluate`` runs every question as one batched ``EpisodeRunner.run`` (the runner
fills its waves from the whole set), with the agent's sampling replaced by the eval
section's (greedy, one sample by default), then scores each final answer against
its golds: exact match after SQuAD normalisation is the accuracy, token F1 and
gold containment are reported beside it. With ``eval.judge=llm`` the accuracy is the
paper's instead: the mean over R runs of the ``Check_Answer`` LLM judge
(``evals.judge``; ``apply_llm_judge``), its spread and no-verdict counts in
``llm_judge``, exact match still in every prediction. Every number says which judge
produced it.

``write_result`` leaves two files: ``predictions.jsonl`` (one line per question:
its answer, golds, per-metric verdicts and why the episode ended, so a score can
be audited line by line) and ``score.json`` (the aggregates). Both are written to
a temporary file and renamed, so a crash never leaves a half-written score.

A score over a corpus retrieved *for* the questions (``bamboogle_support``, see
the shared data PROVENANCE.md) is labelled "targeted corpus": it is not an
open-search accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.runner import EpisodeRunner
from agent.trajectory import Question, Trajectory
from core.config import AgentConfig, ConfigError, EvalConfig
from core.engine import Engine
from core.io import write_atomic
from core.scoring import contains, exact_match, token_f1, wilson_ci
from core.search import SearchBackend
from evals.judge import CheckAnswerJudge, Judge, check_llm_judge

#: the judge behind every number this module produces
JUDGE_DETERMINISTIC = "deterministic: normalised exact match"
#: corpus file names (prefixes) whose passages were retrieved for the eval questions themselves
TARGETED_CORPORA = ("bamboogle_support",)
TARGETED_LABEL = "targeted corpus"


@dataclass
class EvalResult:
    """One model on one question set: aggregates, provenance and every prediction."""

    dataset: str
    model: str
    n: int
    #: share judged correct by ``judge`` (deterministic: exact match; llm: mean over its runs)
    accuracy: float
    #: Wilson 95% interval of ``accuracy`` over the questions
    ci95: tuple[float, float]
    f1: float
    contains: float
    judge: str
    #: how the agent searched: backend, corpus or url, ``targeted_corpus``, a printable ``label``
    search: dict[str, Any]
    #: end reason (up to its first ": ") -> episodes
    end_reasons: dict[str, int]
    searches_per_episode: float
    #: the agent config actually used (eval sampling applied)
    agent: dict[str, Any]
    runner_stats: dict[str, Any]
    seconds: float
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: the LLM judge's runs (``JudgeRuns.summary`` plus the exact-match rate), when it made ``accuracy``
    llm_judge: dict[str, Any] | None = None

    @property
    def n_correct(self) -> int:
        """Questions judged correct (the LLM judge's mean over runs, rounded)."""
        return round(self.accuracy * self.n)

    def score_dict(self) -> dict[str, Any]:
        """What ``score.json`` holds: every field but the predictions (they have their own file)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "predictions"}
        d["ci95"] = list(self.ci95)
        d["n_correct"] = self.n_correct
        d["predictions_file"] = "predictions.jsonl"
        return d


def check_judge(eval_cfg: EvalConfig) -> str:
    """The label of the judge ``eval_cfg`` asks for, or a one-line ConfigError.

    The LLM ``Check_Answer`` judge needs its own engine: ``rest-react eval`` builds one in
    its process, the ReST driver on an actor of its own during each eval phase.
    """
    if eval_cfg.judge == "llm":
        return check_llm_judge(eval_cfg)
    if eval_cfg.judge != "deterministic":
        raise ConfigError(f"eval.judge: unknown judge {eval_cfg.judge!r} (known: deterministic, llm)")
    return JUDGE_DETERMINISTIC


def describe_search(search: SearchBackend | None) -> dict[str, Any]:
    """Where the agent's searches went, read off the backend, with a one-line label."""
    if search is None:
        return {"backend": "closed-book", "targeted_corpus": False, "label": "closed book"}
    corpus = getattr(search, "corpus_path", None)
    if corpus is not None:
        return bm25_info(corpus)
    url = getattr(search, "url", None)
    if url is not None:
        return http_info(url)
    kind = type(search).__name__
    return {"backend": kind, "targeted_corpus": False, "label": kind}


def bm25_info(corpus: str | os.PathLike) -> dict[str, Any]:
    """BM25 over ``corpus``, labelled "targeted corpus" when it was retrieved for the questions."""
    name = Path(corpus).name
    targeted = name.startswith(TARGETED_CORPORA)
    label = f"bm25 {name}" + (f"; {TARGETED_LABEL}, not open-search accuracy" if targeted else "")
    return {"backend": "bm25", "corpus": str(corpus), "targeted_corpus": targeted, "label": label}


def http_info(url: str) -> dict[str, Any]:
    return {"backend": "http", "url": str(url), "targeted_corpus": False, "label": f"http {url}"}


def end_reason_key(traj: Trajectory) -> str:
    """The end reason up to its first ": " (the runner's histogram key: no error text)."""
    return traj.end_reason.split(": ", 1)[0]


def _prediction(q: Question, traj: Trajectory, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    golds = list(q.answers)
    return {
        "question_id": q.id,
        "question": q.question,
        "trajectory_id": traj.id,
        "answer": traj.answer,
        "golds": golds,
        "exact_match": exact_match(traj.answer, golds),
        "f1": token_f1(traj.answer, golds),
        "contains": contains(traj.answer, golds),
        "end_reason": traj.end_reason,
        "searches_used": traj.searches_used,
        "extra": dict(extra or {}),
    }


def evaluate(
    engine: Engine,
    search: SearchBackend | None,
    questions: Sequence[Question],
    agent_cfg: AgentConfig,
    eval_cfg: EvalConfig,
    *,
    dataset: str = "custom",
    model: str = "",
    extras: Mapping[str, Mapping[str, Any]] | None = None,
    llm_judge: CheckAnswerJudge | Callable[[], CheckAnswerJudge] | None = None,
) -> EvalResult:
    """Run the agent on ``questions`` (``search=None``: closed book) and score it (see module doc).

    ``extras`` maps a question id to its record's extra fields, copied into its
    prediction line. ``eval_cfg.limit`` keeps the first N questions. With
    ``eval_cfg.judge == "llm"``, ``llm_judge`` scores the answers: a judge, or a
    function that builds one, called after the agent's run (so the policy's engine can
    be closed first and two engines never share the accelerator).
    """
    if (llm_judge is not None) != (eval_cfg.judge == "llm"):
        if llm_judge is None:
            check_judge(eval_cfg)  # a judge misconfigured is named first
            raise ConfigError("eval.judge=llm: evaluate() was given no judge (llm_judge)")
        raise ConfigError(f"eval.judge: an LLM judge was given but eval.judge={eval_cfg.judge}")
    judge = check_judge(eval_cfg) if llm_judge is None else JUDGE_DETERMINISTIC  # the LLM judge relabels it
    questions = list(questions[: eval_cfg.limit] if eval_cfg.limit else questions)
    if not questions:
        raise ValueError("no questions to evaluate")
    unlabeled = [q.id for q in questions if not q.answers]
    if unlabeled:
        raise ValueError(f"{len(unlabeled)} questions have no gold answers (first: {unlabeled[0]!r})")
    cfg = dataclasses.replace(agent_cfg, temperature=eval_cfg.temperature, k_samples=eval_cfg.k_samples)
    runner = EpisodeRunner(engine, search, cfg)
    t0 = time.perf_counter()
    trajectories = runner.run(questions)
    seconds = time.perf_counter() - t0

    result = score_trajectories(
        questions, trajectories, dataset=dataset, model=model, judge=judge, search=describe_search(search),
        agent=cfg, runner_stats=runner.stats.to_dict(), seconds=seconds, extras=extras,
    )
    if eval_cfg.judge == "llm":
        result = apply_llm_judge(result, llm_judge if isinstance(llm_judge, CheckAnswerJudge) else llm_judge())
    return result


def apply_llm_judge(result: EvalResult, judge: Judge) -> EvalResult:
    """``result`` re-scored by the LLM judge: accuracy = mean over its runs; verdicts in every prediction.

    Every prediction gains ``judge_verdicts`` (one per run: true, false, or null = no
    verdict), ``judge_correct`` (the share of runs that judged it correct) and
    ``judge_texts`` (the raw completions, cut), so each run's score can be audited.
    """
    t0 = time.perf_counter()
    runs = judge.judge([(p["question"], p["answer"], p["golds"]) for p in result.predictions])
    predictions = [
        {**p, "judge_verdicts": v, "judge_correct": sum(x is True for x in v) / runs.runs, "judge_texts": t}
        for p, v, t in zip(result.predictions, runs.verdicts, runs.texts, strict=True)
    ]
    summary, n, seconds = runs.summary(), result.n, time.perf_counter() - t0
    return dataclasses.replace(
        result, accuracy=summary["mean"], ci95=wilson_ci(round(summary["mean"] * n), n), judge=runs.name,
        predictions=predictions, seconds=result.seconds + seconds,
        llm_judge={**summary, "exact_match": sum(p["exact_match"] for p in predictions) / n,
                   "seconds": round(seconds, 3)},
    )


def score_trajectories(
    questions: Sequence[Question],
    trajectories: Sequence[Trajectory],
    *,
    dataset: str,
    model: str,
    judge: str,
    search: dict[str, Any],
    agent: AgentConfig,
    runner_stats: dict[str, Any],
    seconds: float,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> EvalResult:
    """Score one trajectory per question (same order) into an ``EvalResult``.

    Shared by ``evaluate`` (its own engine) and the ReST driver (trajectories from
    sampler actors), so a score means the same thing wherever it was made.
    """
    if not questions:
        raise ValueError(f"{dataset}: nothing to score")
    extras = extras or {}
    predictions = [_prediction(q, t, extras.get(q.id)) for q, t in zip(questions, trajectories, strict=True)]
    n = len(predictions)
    k = sum(p["exact_match"] for p in predictions)
    return EvalResult(
        dataset=dataset,
        model=model,
        n=n,
        accuracy=k / n,
        ci95=wilson_ci(k, n),
        f1=sum(p["f1"] for p in predictions) / n,
        contains=sum(p["contains"] for p in predictions) / n,
        judge=judge,
        search=search,
        end_reasons=dict(Counter(end_reason_key(t) for t in trajectories).most_common()),
        searches_per_episode=sum(t.searches_used for t in trajectories) / n,
        agent=dataclasses.asdict(agent),
        runner_stats=runner_stats,
        seconds=seconds,
        predictions=predictions,
    )


# ------------------------------------------------------------ reporting


def summary_line(result: EvalResult) -> str:
    """One line: dataset, model, accuracy with its CI, n, F1, judge and where the agent searched.

    An LLM judge's accuracy also shows its std over runs, the exact-match rate and the
    runs' no-verdict total.
    """
    lo, hi = result.ci95
    llm = result.llm_judge
    spread = "" if llm is None else (
        f" +- {100 * llm['std']:.1f} over {llm['runs']} judge runs (exact match {100 * llm['exact_match']:.1f}%, "
        f"no verdict {sum(llm['no_verdict_per_run'])})"
    )
    return (
        f"{result.dataset}  model={result.model}  accuracy {100 * result.accuracy:.1f}%{spread} "
        f"(95% CI {100 * lo:.1f}-{100 * hi:.1f})  n={result.n}  f1 {result.f1:.2f}  "
        f"judge={result.judge}  [search: {result.search['label']}]"
    )


def end_reasons_line(result: EvalResult) -> str:
    """The end-reason histogram as one line, most frequent first."""
    parts = ", ".join(f"{reason} {count}" for reason, count in result.end_reasons.items())
    return f"end reasons: {parts}  (searches/episode {result.searches_per_episode:.2f}, {result.seconds:.1f} s)"


def write_result(result: EvalResult, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``predictions.jsonl`` then ``score.json`` into ``out_dir``; return both paths.

    The score is written last, so a ``score.json`` always has its full predictions beside it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds_path, score_path = out / "predictions.jsonl", out / "score.json"
    write_atomic(preds_path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions))
    write_atomic(score_path, json.dumps(result.score_dict(), indent=2, ensure_ascii=False) + "\n")
    return preds_path, score_path
