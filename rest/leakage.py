"""The leakage guard: no evaluation question, nor any passage stating its gold facts, in training data.

A gain measured on toy-test means something only if nothing of toy-test was trained
on. The driver runs two checks and fails the run (one line: the first violation and
how many there were) on any violation:

- ``HeldOut.check_questions`` before any rollout: the training questions share no id
  and no question text (case and spacing folded) with any eval dataset;
- ``HeldOut.check_trajectories`` in the store phase, before anything is written to the
  growing batch: no LLM step that becomes a training example was shown, at its own or
  an earlier search of its episode, a passage listed in an eval question's
  ``gold_passages`` (the toy world records them; a dataset without them gets only the
  question check). A snippet reaches a training example through its prompt, and a
  summary restates it in the completion, the trained tokens.

The splits share no gold fact (the toy world deals regions to splits), but they share
the corpus, and a search that misses lands on a look-alike or a neighbour, often in a
test region, so an unguarded training episode is often shown a test question's gold
passage (docs/history.md has how often). So the driver's rollout searches skip the
held-out passages (``actors.search.actor``, ``hide_held_out``); evaluation searches the
whole corpus. The store check is the guard behind that, whatever the search backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.trajectory import Question, Trajectory
from evals.datasets import Dataset


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class HeldOut:
    """What training must never see: the eval questions and their gold passages."""

    ids: dict[str, str] = field(default_factory=dict)  # question id -> "dataset:id"
    texts: dict[str, str] = field(default_factory=dict)  # folded question text -> "dataset:id"
    passages: dict[str, str] = field(default_factory=dict)  # gold passage id -> "dataset:id"

    @classmethod
    def of(cls, datasets: Iterable[Dataset]) -> HeldOut:
        ids, texts, passages = {}, {}, {}
        for d in datasets:
            for q in d.questions:
                where = f"{d.name}:{q.id}"
                ids.setdefault(q.id, where)
                texts.setdefault(_fold(q.question), where)
                for p in d.extras.get(q.id, {}).get("gold_passages", []) or []:
                    passages.setdefault(str(p), where)
        return cls(ids, texts, passages)

    def check_questions(self, train: Sequence[Question], train_name: str) -> list[str]:
        """One message per training question that is also an eval question."""
        out = []
        for q in train:
            hit = self.ids.get(q.id) or self.texts.get(_fold(q.question))
            if hit:
                out.append(f"training question {train_name}:{q.id} is eval question {hit}")
        return out

    def check_trajectories(self, trajectories: Iterable[Trajectory], kept: set[tuple[str, int]]) -> list[str]:
        """One message per kept step ((trajectory id, step index) in ``kept``) that saw an eval gold passage."""
        out = []
        for t in trajectories:
            seen: dict[str, str] = {}  # eval gold passage id -> the query that found it
            for index, step in enumerate(t.steps):
                if (t.id, index) in kept and seen:
                    doc, query = next(iter(seen.items()))
                    out.append(f"training example {t.id} step {index} ({step.kind}) was shown passage {doc}, "
                               f"a gold passage of eval question {self.passages[doc]} (search {query!r})")
                for s in step.snippets:
                    if s.doc_id in self.passages:
                        seen.setdefault(s.doc_id, step.query or "")
        return out
