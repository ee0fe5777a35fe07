"""The paper's AI feedback: an LLM ranks a step's K samples from the step's own input.

For each step the judge gets ``prompts.ranker_prompt(step.prompt, candidates)`` (in the
judge model's chat template when its tokenizer has one, as a raw completion otherwise)
and answers greedily (stop ``RANKER_STOP``) with an explanation, the best candidate and
a full ranking, read by ``agent.parsers.parse_ranking``. The candidates are shown in a
shuffled order, seeded by the step's text, so the judge's position bias (LLM judges
favour the first or last candidate) cannot become the policy's training signal; the
ranking is mapped back to the samples. The sample ranked at position p (0 = best)
scores K - p.

A verdict that does not parse, or an engine that fails, gives every sample the same
score, so the tie goes to perplexity; both are counted (``stats``, with the latest
unparsed text), and the driver fails the rank phase when they are more than
``ranker.max_unparsed_rate`` of the verdicts. Steps whose K samples are all the same
text need no verdict and score equal without an engine call. All the steps of one
``score_batch`` call share one engine call; if that call fails, each prompt is retried
alone once, so one over-long prompt cannot take a whole batch down.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence

import prompts
from actors.rankers.base import StepContext
from agent.parsers import ParseError, parse_ranking
from agent.trajectory import Step
from core.engine import Engine

#: characters of the latest unparsed verdict kept in the stats (to show what went wrong)
UNPARSED_KEEP = 160


class LLMJudge:
    """Ranks samples with a judge model behind an ``Engine`` (see the module doc).

    ``chat`` wraps a prompt in the judge model's chat template (``actors.engines.chat_format``);
    ``seed`` seeds the candidate order of every step together with the step's text.
    """

    name = "llm-judge"

    def __init__(self, engine: Engine, max_new_tokens: int = 96, chat: Callable[[str], str] | None = None,
                 seed: int = 0):
        if max_new_tokens < 1:
            raise ValueError(f"llm-judge: max_new_tokens must be >= 1, got {max_new_tokens}")
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.chat = chat or (lambda text: text)
        self.seed = seed
        self.counts = {"judged": 0, "identical": 0, "fallback_unparseable": 0, "fallback_engine": 0}
        self.last_unparsed: str | None = None

    def stats(self) -> dict[str, int | str]:
        extra = {} if self.last_unparsed is None else {"last_unparsed": self.last_unparsed}
        return {**self.counts, **extra}

    def score(self, step: Step, ctx: StepContext) -> list[float]:
        return self.score_batch([(step, ctx)])[0]

    def order(self, step: Step) -> list[int]:
        """The sample indices in the order the judge sees them (a permutation seeded by the step's text)."""
        key = "\x00".join([step.prompt or "", *(s.text for s in step.samples)])
        order = list(range(len(step.samples)))
        random.Random(self.seed * 1_000_003 + zlib.crc32(key.encode())).shuffle(order)
        return order

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
        orders = {j: self.order(items[j][0]) for j in todo}
        verdicts = self._generate([self.chat(judge_prompt(items[j][0], orders[j])) for j in todo])
        for j, verdict in zip(todo, verdicts, strict=True):
            k = len(items[j][0].samples)
            if verdict is None:
                self.counts["fallback_engine"] += 1
                continue
            try:
                _, _, ranking = parse_ranking(verdict, k)
            except ParseError:
                self.counts["fallback_unparseable"] += 1
                self.last_unparsed = verdict[:UNPARSED_KEEP]
                continue
            self.counts["judged"] += 1
            for position, shown in enumerate(ranking):
                out[j][orders[j][shown]] = float(k - position)
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


def judge_prompt(step: Step, order: Sequence[int] | None = None) -> str:
    """The ranking prompt for one step: its input and its K sample texts (in ``order``, if given)."""
    if step.prompt is None:
        raise ValueError(f"llm-judge: the {step.kind} step has no prompt to judge")
    shown = range(len(step.samples)) if order is None else order
    return prompts.ranker_prompt(step.prompt, [step.samples[i].text for i in shown])


def verdict_counters(stats: dict, max_unparsed_rate: float) -> tuple[dict, str | None]:
    """One rank phase's verdict counters (judged, unparsed, engine failures and their rate among the steps
    that needed a verdict) from the rankers' summed ``stats``, and a one-line error when the rate is
    above ``max_unparsed_rate`` (those steps fell back to ties), else None."""
    judged, unparsed, failed = (int(stats.get(k, 0)) for k in ("judged", "fallback_unparseable", "fallback_engine"))
    needed = judged + unparsed + failed
    rate = (unparsed + failed) / needed if needed else 0.0
    counters = {"verdicts_needed": needed, "verdicts_unparsed": unparsed, "verdicts_engine_failed": failed,
                "unparsed_rate": round(rate, 4)}
    if rate <= max_unparsed_rate:
        return counters, None
    example = f"; the latest unparsed verdict: {stats['last_unparsed']!r}" if unparsed and stats.get("last_unparsed") \
        else ""
    return counters, (f"the llm-judge ranker gave no usable verdict on {unparsed + failed} of {needed} steps "
                      f"({100 * rate:.1f}% > ranker.max_unparsed_rate {100 * max_unparsed_rate:g}%: {unparsed} did not "
                      f"parse, {failed} engine failures){example}")
