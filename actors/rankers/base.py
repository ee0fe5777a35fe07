"""What a ranker scores: one LLM step with the context the agent had when it took the step.

A ranker sees one LLM step at a time together with a ``StepContext``: what the agent had
seen when it took that step (question, notes, snippets, past queries), rebuilt from the
trajectory by ``step_contexts``. Every ranker kind implements ``StepRanker``; only the
oracle is ever given gold, every other ranker gets ``gold=None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import prompts
from agent.parsers import ParseError, parse_answer, parse_check, parse_summary
from agent.trajectory import Step, Trajectory
from core.search import Snippet
from prompts.actions import Revise


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
