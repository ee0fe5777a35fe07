"""One episode of the ReAct search agent as an explicit state machine (DESIGN section 1).

decision -> search -> summarize -> decision ... -> answer -> relevance -> grounding -> final

The episode never calls a model or a search backend itself. It says what it waits
on (``waiting``: an LLM ``prompt`` or a search ``query``), and the runner feeds it
the answers (``feed_samples`` / ``feed_passages``). That inversion is what lets one
runner batch the LLM calls of many episodes into one engine call per wave.

Every LLM step keeps its K samples; the episode continues with the one picked by a
``Chooser`` (default: the lowest mean negative log-likelihood per token among the
samples that parse). When no sample parses the episode ends with
``unparseable:<kind>``; it never raises because of model output.

Closed book (no search tool), nothing was shown, so nothing can be cited: the answer
and self-check steps drop well-formed ``[link_id=N]`` marks before parsing instead of
failing on them. A model trained to always cite still gets its answer read, which is
what makes the closed-book control measure knowledge rather than citation format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import prompts
from agent.parsers import ParseError, parse_answer, parse_check, parse_decision, parse_summary
from agent.trajectory import Step, Trajectory
from core.config import AgentConfig
from core.engine import Sample
from core.search import Passage, Snippet
from prompts.actions import Answer, Keep, Revise, Search, Summary, Terminate, strip_citations

#: picks the sample an LLM step continues with: (step with samples and parse_ok filled,
#: parsed result per sample or None where it did not parse) -> index, or None if none fits
Chooser = Callable[[Step, list[object | None]], int | None]

Waiting = Literal["llm", "search", "done"]


def lowest_nll_parseable(step: Step, parsed: list[object | None]) -> int | None:
    """The paper's rollout rule: the parseable sample with the lowest mean NLL per token.

    Ties go to the earlier sample; a NaN likelihood counts as the worst possible.
    """
    def key(i: int) -> tuple[float, int]:
        nll = step.samples[i].mean_nll
        return (math.inf if math.isnan(nll) else nll, i)

    ok = [i for i, p in enumerate(parsed) if p is not None]
    return min(ok, key=key) if ok else None


class Episode:
    """The state of one trajectory between LLM/search calls (see the module doc)."""

    def __init__(
        self,
        trajectory: Trajectory,
        cfg: AgentConfig,
        *,
        closed_book: bool = False,
        choose: Chooser = lowest_nll_parseable,
    ):
        self.traj = trajectory
        self.cfg = cfg
        self.closed_book = closed_book
        self.choose = choose
        self.notes: list[prompts.Note] = []
        #: link ids of every snippet shown so far (valid citations for the answer)
        self.shown: list[int] = []
        self._last_snippets: list[Snippet] = []
        self._query: str | None = None
        self._answer: Answer | None = None
        self._prompt: str | None = None
        # closed book or no budget: the episode starts at the answer, with no notes
        self.kind: str = "answer" if closed_book or cfg.search_budget <= 0 else "decision"

    # ------------------------------------------------------------ what it waits on

    @property
    def waiting(self) -> Waiting:
        if self.traj.done:
            return "done"
        return "search" if self.kind == "search" else "llm"

    @property
    def remaining_searches(self) -> int:
        return self.cfg.search_budget - self.traj.searches_used

    def prompt(self) -> str:
        """The prompt of the LLM step the episode waits on (built once per step)."""
        if self.waiting != "llm":
            raise RuntimeError(f"episode {self.traj.id} is not waiting on an LLM (state {self.kind})")
        if self._prompt is None:
            self._prompt = self._build_prompt()
        return self._prompt

    def query(self) -> str:
        """The search query the episode waits on."""
        if self.waiting != "search" or self._query is None:
            raise RuntimeError(f"episode {self.traj.id} is not waiting on a search (state {self.kind})")
        return self._query

    def end(self, reason: str) -> None:
        """Stop the episode early with ``reason`` (no answer)."""
        self.traj.end_reason = reason
        self.traj.answer = None

    def _build_prompt(self) -> str:
        q, style = self.traj.question, self.cfg.prompt_style
        if self.kind == "decision":
            return prompts.decision_prompt(q, self.notes, self.remaining_searches, style)
        if self.kind == "summarize":
            assert self._query is not None
            return prompts.summarize_prompt(q, self._query, self._last_snippets, style)
        if self.kind == "answer":
            return prompts.answer_prompt(q, self.notes, style)
        assert self._answer is not None
        if self.kind == "relevance":
            return prompts.relevance_prompt(q, self._answer.text, style)
        if self.kind == "grounding":
            return prompts.grounding_prompt(q, self._answer.text, self.notes, style)
        raise RuntimeError(f"no prompt for state {self.kind!r}")

    # ------------------------------------------------------------ LLM steps

    def feed_samples(self, samples: Sequence[Sample]) -> None:
        """Record the K samples of the current LLM step, pick one and advance."""
        step = Step(
            kind=self.kind,  # type: ignore[arg-type]
            policy_version=self.traj.policy_version,
            prompt=self.prompt(),
            samples=list(samples),
        )
        parsed: list[object | None] = []
        errors: list[str] = []
        for i, sample in enumerate(step.samples):
            try:
                parsed.append(self._parse(sample.text))
            except ParseError as e:
                parsed.append(None)
                errors.append(f"sample {i}: {e}")
        step.parse_ok = [p is not None for p in parsed]
        step.error = "; ".join(errors) or None
        self.traj.steps.append(step)
        self._prompt = None

        chosen = self.choose(step, parsed)
        if chosen is None:
            self.end(f"unparseable:{step.kind}")
            return
        if not (0 <= chosen < len(parsed)) or parsed[chosen] is None:
            raise ValueError(f"chooser picked sample {chosen!r}, which is not a parseable sample")
        step.chosen = chosen
        self._advance(step, parsed[chosen])

    def _parse(self, text: str) -> object:
        if self.closed_book and self.kind in ("answer", "relevance", "grounding"):
            text = strip_citations(text)
        if self.kind == "decision":
            return parse_decision(text)
        if self.kind == "summarize":
            return parse_summary(text, [s.link_id for s in self._last_snippets])
        if self.kind == "answer":
            return parse_answer(text, self.shown)
        return parse_check(text, self.shown)

    def _advance(self, step: Step, result: object) -> None:
        """Apply the chosen parsed result of an LLM step and move to the next state."""
        if isinstance(result, Search):
            step.output = result.query
            self._query = result.query
            self.kind = "search"
        elif isinstance(result, Terminate):
            step.output = "Terminate()"
            self.kind = "answer"
        elif isinstance(result, Summary):
            step.output = "None" if result.text is None else result.text
            assert self._query is not None
            self.notes.append(prompts.Note(query=self._query, summary=result.text))
            self._query = None
            self.kind = "decision" if self.remaining_searches > 0 else "answer"
        elif isinstance(result, Answer):
            step.output = result.text
            self._answer = result
            self.kind = "relevance" if self.cfg.self_checks else "final"
        elif isinstance(result, (Keep, Revise)):
            if isinstance(result, Revise):
                self._answer = result.answer
                step.output = result.answer.text
            else:
                step.output = "Keep"
            self.kind = "grounding" if self.kind == "relevance" else "final"
        else:
            raise TypeError(f"unexpected parse result {type(result).__name__} in state {self.kind}")
        if self.kind == "final":
            self._finish()

    def _finish(self) -> None:
        assert self._answer is not None
        plain = self._answer.plain
        self.traj.steps.append(Step(kind="final", policy_version=self.traj.policy_version, output=plain))
        self.traj.answer = plain
        self.traj.end_reason = "answered"

    # ------------------------------------------------------------ the search step

    def feed_passages(self, passages: Sequence[Passage]) -> None:
        """Record the search step's top-k snippets (link ids global in the episode) and advance."""
        query = self.query()
        # fixed blocks of k per search (1..k, k+1..2k, ...) even when a search finds fewer
        first = self.traj.searches_used * self.cfg.topk + 1
        snippets = [
            Snippet(link_id=first + i, doc_id=p.id, title=p.title, text=p.text)
            for i, p in enumerate(list(passages)[: self.cfg.topk])
        ]
        self.traj.steps.append(
            Step(kind="search", policy_version=self.traj.policy_version, query=query, snippets=snippets)
        )
        self.traj.searches_used += 1
        self.shown.extend(s.link_id for s in snippets)
        self._last_snippets = snippets
        self.kind = "summarize"
