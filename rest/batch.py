"""The growing batch: ReST's training set, one record per ranked LLM step, kept on disk.

Every generation appends the best sample of every LLM step of its rollouts (DESIGN
section 1: "the pair (step input, best output) is one training example"), and every
fine-tune trains on ALL generations so far. The store is append-only per generation:
``batch/gen-<k>.jsonl`` is written whole, through a temporary file and a rename, so a
crash never leaves half a generation and writing generation k again replaces it (a
resumed ``store`` phase cannot duplicate records).

A record keeps everything needed to audit or re-rank the step later: the prompt, all
K samples (text, token count, summed log-probability), which ones parsed, the ranker's
scores, ``chosen`` (the ranker's pick, the training target), ``continued`` (the sample
the rollout went on with) and the policy version that sampled it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.trajectory import Trajectory
from core.io import read_jsonl, write_jsonl
from learner.data import SFTExample
from learner.selection import distinct_examples, improves, target, to_example

#: the keys every record has
RECORD_KEYS = (
    "gen", "question_id", "trajectory_id", "step_index", "step_kind", "prompt", "samples",
    "parse_ok", "scores", "chosen", "continued", "policy_version",
)
_GEN_FILE = re.compile(r"^gen-(\d+)\.jsonl$")


class BatchError(ValueError):
    """A batch file is unreadable or a record is malformed; one line naming file and line."""


# ------------------------------------------------------------ step -> record


def step_records(gen: int, traj: Trajectory) -> list[dict[str, Any]]:
    """One record per LLM step of ``traj`` that has a usable sample; ``chosen`` is its target (``learner.selection``)."""
    out = []
    for index, step in enumerate(traj.steps):
        if not step.is_llm or not step.samples:
            continue
        chosen = target(step)
        if chosen is None:
            continue
        out.append({
            "gen": gen,
            "question_id": traj.question_id,
            "trajectory_id": traj.id,
            "step_index": index,
            "step_kind": step.kind,
            "prompt": step.prompt,
            "samples": [[s.text, s.n_tokens, s.sum_logprob] for s in step.samples],
            "parse_ok": list(step.parse_ok),
            "scores": list(step.scores) if step.scores is not None else None,
            "chosen": chosen,
            "continued": step.chosen,
            "policy_version": step.policy_version,
        })
    return out


# ------------------------------------------------------------ the store


@dataclass
class GrowingBatch:
    """``batch/gen-<k>.jsonl`` files under ``root``: one per finished ``store`` phase."""

    root: Path
    _examples_of: tuple = field(default=(None, [], 0), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def path(self, gen: int) -> Path:
        return self.root / f"gen-{gen}.jsonl"

    def write_gen(self, gen: int, records: Sequence[dict[str, Any]]) -> int:
        """Write generation ``gen``'s records whole (replacing any earlier write of it)."""
        if gen < 1:
            raise ValueError(f"batch generations start at 1, got {gen}")
        for r in records:
            _check_record(r, f"gen {gen} record")
            if r["gen"] != gen:
                raise ValueError(f"record of gen {r['gen']} written into gen {gen}")
        keys = [(r["trajectory_id"], r["step_index"]) for r in records]
        if len(set(keys)) != len(keys):
            raise ValueError(f"gen {gen}: duplicate (trajectory_id, step_index) records")
        return write_jsonl(self.path(gen), records)

    def gens(self) -> list[int]:
        """The generations stored, ascending."""
        if not self.root.is_dir():
            return []
        found = (_GEN_FILE.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def read_gen(self, gen: int) -> list[dict[str, Any]]:
        path = self.path(gen)
        if not path.is_file():
            raise BatchError(f"{path}: generation {gen} is not in the batch")
        rows = read_jsonl(path, BatchError)
        for lineno, r in enumerate(rows, start=1):
            _check_record(r, f"{path}:{lineno}")
        return rows

    def all(self, upto: int | None = None) -> list[dict[str, Any]]:
        """Every record of generations 1..``upto`` (default: all stored), in generation order."""
        return [r for g in self.gens() if upto is None or g <= upto for r in self.read_gen(g)]

    def examples(self, upto: int | None = None, improved: bool = False) -> list[SFTExample]:
        """The training examples of generations 1..``upto``, repeats included (see ``distinct_examples``);
        with ``improved`` only those of the steps where the ranker improved on the policy (``improves``)."""
        return [to_example(r) for r in self.all(upto) if not improved or improves(r)]

    def training_examples(self, gen: int, distinct: bool, improved: bool = False) -> tuple[list[SFTExample], int]:
        """What a model of generation ``gen`` trains on (the batch up to ``gen``, each (prompt, target) once
        if ``distinct``; only the steps where the ranker improved on the policy if ``improved``:
        ``learner.selection.improves``) and how many repeats that left out; the latest read is kept
        (the students share L's when they train on the same)."""
        key = (gen, distinct, improved)
        if self._examples_of[0] != key:
            every = self.examples(upto=gen, improved=improved)
            examples = distinct_examples(every) if distinct else every
            self._examples_of = (key, examples, len(every) - len(examples))
        return self._examples_of[1], self._examples_of[2]


def _check_record(r: Any, where: str) -> None:
    if not isinstance(r, dict):
        raise BatchError(f"{where}: not a mapping")
    missing = [k for k in RECORD_KEYS if k not in r]
    if missing:
        raise BatchError(f"{where}: missing keys {', '.join(missing)}")
    samples, chosen = r["samples"], r["chosen"]
    if not isinstance(chosen, int) or not 0 <= chosen < len(samples):
        raise BatchError(f"{where}: chosen={chosen!r} is not an index into its {len(samples)} samples")
    if not r["parse_ok"][chosen]:
        raise BatchError(f"{where}: chosen sample {chosen} did not parse")
