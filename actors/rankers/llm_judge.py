"""The paper's AI feedback: an LLM ranks a step's K samples from the step's own input.

For each step the judge gets ``prompts.ranker_prompt(step.prompt, sample texts)``
and answers greedily (stop ``RANKER_STOP``) with an explanation, the best candidate
and a full ranking, read by ``agent.parsers.parse_ranking``. The sample ranked at
position p (0 = best) scores K - p. A verdict that does not parse, or an engine that
fails, gives every sample the same score, so the tie goes to perplexity; both are
counted (``stats``). Steps whose K samples are all the same text need no verdict and
score equal without an engine call. All the steps of one ``score_batch`` call share
one engine call; if that call fails, each prompt is retried alone once, so one
over-long prompt cannot take a whole batch down.
"""

from __future__ import annotations

from collections.abc import Sequence

import prompts
from actors.rankers.base import StepContext
from agent.parsers import ParseError, parse_ranking
from agent.trajectory import Step
from core.engine import Engine


class LLMJudge:
    """Ranks samples with a judge model behind an ``Engine`` (see the module doc)."""

    name = "llm-judge"

    def __init__(self, engine: Engine, max_new_tokens: int = 96):
        if max_new_tokens < 1:
            raise ValueError(f"llm-judge: max_new_tokens must be >= 1, got {max_new_tokens}")
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.counts = {"judged": 0, "identical": 0, "fallback_unparseable": 0, "fallback_engine": 0}

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def score(self, step: Step, ctx: StepContext) -> list[float]:
        return self.score_batch([(step, ctx)])[0]

    def score_batch(self, items: Sequence[tuple[Step, StepContext]]) -> list[list[float]]:
        """Scores of every step in ``items`` (one engine call for all steps that need a verdict)."""
        out: list[list[float]] = [[0.0] * len(step.samples) for step, _ in items]
        todo = []
        for j, (step, _) in enumerate(items):
            texts = [s.text for s in step.samples]
            if len(set(texts)) <= 1 or step.prompt is None:
                self.counts["identical"] += 1
            else:
                todo.append(j)
        verdicts = self._generate([judge_prompt(items[j][0]) for j in todo])
        for j, verdict in zip(todo, verdicts, strict=True):
            k = len(items[j][0].samples)
            if verdict is None:
                self.counts["fallback_engine"] += 1
                continue
            try:
                _, _, ranking = parse_ranking(verdict, k)
            except ParseError:
                self.counts["fallback_unparseable"] += 1
                continue
            self.counts["judged"] += 1
            for position, i in enumerate(ranking):
                out[j][i] = float(k - position)
        return out

    def _generate(self, judge_prompts: list[str]) -> list[str | None]:
        """The judge's text per prompt; None where the engine failed even on the prompt alone."""
        if not judge_prompts:
            return []
        try:
            return [samples[0].text for samples in self._call(judge_prompts)]
        except Exception:  # the batch failed: retry each prompt alone, once
            texts: list[str | None] = []
            for p in judge_prompts:
                try:
                    texts.append(self._call([p])[0][0].text)
                except Exception:  # this prompt cannot be judged: equal scores, counted
                    texts.append(None)
            return texts

    def _call(self, judge_prompts: list[str]):
        outputs = self.engine.generate(
            judge_prompts,
            n=1,
            temperature=0.0,
            max_new_tokens=self.max_new_tokens,
            stop=prompts.RANKER_STOP,
            seed=0,
        )
        if len(outputs) != len(judge_prompts) or any(len(o) < 1 for o in outputs):
            raise RuntimeError(f"judge engine returned {len(outputs)} outputs for {len(judge_prompts)} prompts")
        return outputs


def judge_prompt(step: Step) -> str:
    """The ranking prompt for one step: its input and its K sample texts."""
    if step.prompt is None:
        raise ValueError(f"llm-judge: the {step.kind} step has no prompt to judge")
    return prompts.ranker_prompt(step.prompt, [s.text for s in step.samples])
