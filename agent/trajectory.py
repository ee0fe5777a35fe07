"""What an episode leaves behind: samples, steps and trajectories.

Every LLM step keeps its prompt, its K samples (each with token count and summed
log-probability), the index of the sample the rollout continued with, room for the
ranker's scores and the policy version that produced it. These records are the raw
material of ReST: the ranker scores them, the growing batch stores them, the report
browses them. All of it round-trips through plain JSON (``to_dict``/``from_dict``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from core.engine import Sample
from core.search import Snippet

StepKind = Literal["decision", "search", "summarize", "answer", "relevance", "grounding", "final"]
STEP_KINDS: tuple[str, ...] = ("decision", "search", "summarize", "answer", "relevance", "grounding", "final")
LLM_STEP_KINDS: tuple[str, ...] = ("decision", "summarize", "answer", "relevance", "grounding")


@dataclass(frozen=True)
class Question:
    """A question as the data files hold it (``answers`` may be empty when unlabeled)."""

    id: str
    question: str
    answers: tuple[str, ...] = ()


@dataclass
class Step:
    """One state of the agent's state machine.

    LLM steps fill ``prompt``/``samples``/``chosen``; the search step fills
    ``query``/``snippets``; the final step only ``output``. ``output`` is the parsed
    result the episode continued with (query, summary, answer...), as plain text.
    """

    kind: StepKind
    policy_version: int = 0
    prompt: str | None = None
    samples: list[Sample] = field(default_factory=list)
    parse_ok: list[bool] = field(default_factory=list)
    chosen: int | None = None
    output: str | None = None
    query: str | None = None
    snippets: list[Snippet] = field(default_factory=list)
    scores: list[float] | None = None
    ranker_best: int | None = None
    error: str | None = None

    @property
    def is_llm(self) -> bool:
        return self.kind in LLM_STEP_KINDS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        d = dict(d)
        d["samples"] = [Sample(**s) for s in d.get("samples", [])]
        d["snippets"] = [Snippet(**s) for s in d.get("snippets", [])]
        return cls(**d)


@dataclass
class Trajectory:
    """A whole episode for one question.

    ``end_reason`` says why it stopped: ``answered`` (went through the final step),
    or ``unparseable:<kind>`` / ``search_failed`` / ``engine_failed`` / ``error:<msg>``
    when it ended early. ``answer`` is the final answer (citations stripped), or None.
    """

    id: str
    question_id: str
    question: str
    policy_version: int = 0
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None
    end_reason: str = "running"
    searches_used: int = 0

    @property
    def done(self) -> bool:
        return self.end_reason != "running"

    def llm_steps(self) -> list[Step]:
        return [s for s in self.steps if s.is_llm]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question_id": self.question_id,
            "question": self.question,
            "policy_version": self.policy_version,
            "steps": [s.to_dict() for s in self.steps],
            "answer": self.answer,
            "end_reason": self.end_reason,
            "searches_used": self.searches_used,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        d = dict(d)
        d["steps"] = [Step.from_dict(s) for s in d.get("steps", [])]
        return cls(**d)
