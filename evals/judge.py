"""The paper's auto-eval: a 5-shot ``Check_Answer(question, answer, reference)`` LLM judge, R runs averaged.

Aksitov et al. score Bamboogle with an LLM asked, through a few-shot code prompt,
whether an answer says the same as the reference; the judge samples, so they average
10 runs and report the mean and its spread. ``CheckAnswerJudge`` does that over any
``Engine`` (transformers or vLLM): every (question, answer, gold) triple gets the
prompt of ``prompts.check_answer_prompt``, and one engine call draws R samples of
each at ``temperature`` (> 0, so the runs differ); sample r of every prompt is run r.

The judge's text is untrusted: it is read by ``agent.parsers.parse_judgement``
(`` True`` or `` False`` on one line, nothing else). Anything else is "no verdict":
counted per run, reported, and never counted as correct. A question with several
golds is correct in a run if the judge accepts any of them; an episode that gave no
answer is incorrect without asking the judge (the prompt itself says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import prompts
from actors.engines import make_engine
from agent.parsers import ParseError, parse_judgement
from core.config import Config, ConfigError, EvalConfig
from core.engine import Engine
from core.hub import is_local
from core.scoring import mean_std

#: how much of each raw judge completion a prediction keeps for auditing
TEXT_KEEP = 80

Verdict = bool | None  # None: the judge's text did not parse


def judge_name(model: str, runs: int, temperature: float) -> str:
    """How every number this judge produced is labelled."""
    return f"llm: Check_Answer 5-shot ({Path(model.rstrip('/')).name}), mean of {runs} runs at T={temperature:g}"


def check_llm_judge(eval_cfg: EvalConfig) -> str:
    """The label of the LLM judge ``eval_cfg`` configures, or a one-line ConfigError."""
    if not eval_cfg.judge_model:
        raise ConfigError("eval.judge=llm: the LLM Check_Answer judge needs a judge engine: "
                          "set eval.judge_model (rest-react eval --judge-model DIR)")
    if is_local(eval_cfg.judge_model) and not Path(eval_cfg.judge_model).expanduser().is_dir():
        raise ConfigError(f"eval.judge_model: not a model directory nor a hub id: {eval_cfg.judge_model}")
    if eval_cfg.judge_runs > 1 and eval_cfg.judge_temperature == 0:
        raise ConfigError(f"eval.judge_temperature: 0 makes all {eval_cfg.judge_runs} judge runs identical; "
                          "use a temperature > 0 or eval.judge_runs=1")
    return judge_name(eval_cfg.judge_model, eval_cfg.judge_runs, eval_cfg.judge_temperature)


@dataclass
class JudgeRuns:
    """R runs of the judge over n predictions: per prediction, R verdicts and the R raw texts."""

    name: str
    runs: int
    temperature: float
    verdicts: list[list[Verdict]]
    texts: list[list[str]]
    #: predictions that had no answer (incorrect in every run, the judge not asked)
    no_answer: int

    def accuracy_per_run(self) -> list[float]:
        n = len(self.verdicts)
        return [sum(v[r] is True for v in self.verdicts) / n for r in range(self.runs)]

    def no_verdict_per_run(self) -> list[int]:
        return [sum(v[r] is None for v in self.verdicts) for r in range(self.runs)]

    def summary(self) -> dict[str, Any]:
        """Mean and sample std of accuracy over runs, each run's accuracy and its no-verdict count."""
        per_run = self.accuracy_per_run()
        mean, std = mean_std(per_run)
        return {"judge": self.name, "runs": self.runs, "temperature": self.temperature, "mean": mean, "std": std,
                "accuracy_per_run": per_run, "no_verdict_per_run": self.no_verdict_per_run(),
                "no_answer": self.no_answer}


class Judge(Protocol):
    """What scores answers: R verdicts per (question, answer or None, golds), as ``JudgeRuns``."""

    def judge(self, items: Sequence[tuple[str, str | None, Sequence[str]]]) -> JudgeRuns: ...


class CheckAnswerJudge:
    """``Check_Answer`` through ``engine``: R sampled runs, strictly parsed (see the module doc)."""

    def __init__(self, engine: Engine, *, model: str, runs: int = 10, temperature: float = 0.5,
                 max_new_tokens: int = 8, seed: int = 0):
        if runs < 1:
            raise ValueError(f"judge runs must be >= 1, got {runs}")
        if runs > 1 and temperature <= 0:
            raise ValueError(f"{runs} judge runs at temperature {temperature} would all be identical")
        self.engine, self.runs, self.temperature = engine, runs, temperature
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.name = judge_name(model, runs, temperature)

    @classmethod
    def from_config(cls, cfg: Config) -> CheckAnswerJudge:
        """The judge ``cfg.eval`` names; its engine is the policy's engine section with the judge's model."""
        check_llm_judge(cfg.eval)
        e = cfg.eval
        engine = make_engine(cfg.engine.serving(e.judge_model, e.judge_backend),
                             revision=cfg.models.revisions.get(e.judge_model))
        return cls(engine, model=e.judge_model, runs=e.judge_runs, temperature=e.judge_temperature,
                   max_new_tokens=e.judge_max_new_tokens, seed=e.judge_seed)

    def judge(self, items: Sequence[tuple[str, str | None, Sequence[str]]]) -> JudgeRuns:
        """R verdicts for each (question, answer or None, golds) in ``items``, from one engine call."""
        triples = [(i, q, a, g) for i, (q, a, golds) in enumerate(items) if a is not None for g in golds]
        outputs = self.engine.generate(
            [prompts.check_answer_prompt(q, a, g) for _, q, a, g in triples], n=self.runs,
            temperature=self.temperature, max_new_tokens=self.max_new_tokens, stop=prompts.STOP, seed=self.seed)
        if len(outputs) != len(triples) or any(len(o) != self.runs for o in outputs):
            raise RuntimeError(f"judge engine returned {len(outputs)} outputs for {len(triples)} prompts")
        per_item: list[list[list[Verdict]]] = [[] for _ in items]  # item -> gold -> run -> verdict
        texts: list[list[str]] = [[] for _ in items]
        for (i, *_), samples in zip(triples, outputs, strict=True):
            per_item[i].append([_verdict(s.text) for s in samples])
            if not texts[i]:  # the first gold's texts are enough to audit
                texts[i] = [s.text[:TEXT_KEEP] for s in samples]
        verdicts = [[_any_gold([g[r] for g in golds]) for r in range(self.runs)] if golds else [False] * self.runs
                    for golds in per_item]
        return JudgeRuns(self.name, self.runs, self.temperature, verdicts, texts,
                         no_answer=sum(a is None for _, a, _ in items))

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()


def _verdict(text: str) -> Verdict:
    try:
        return parse_judgement(text)
    except ParseError:
        return None


def _any_gold(verdicts: Sequence[Verdict]) -> Verdict:
    """Correct if any gold was accepted; no verdict if none was and some did not parse."""
    if any(v is True for v in verdicts):
        return True
    return None if any(v is None for v in verdicts) else False
