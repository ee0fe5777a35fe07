"""What trains: which sample of a ranked LLM step becomes a training target, and the examples it makes.

The one place the rule lives, for the rank phase, the store phase and a sampler that
continues with the ranker's pick (``rest.continue_with: ranker``):

- a sample is *usable* as a target when it parsed and is one line;
- a ranker's scores are floored so that an unparseable sample ranks below every parseable one;
- the best sample is the highest-scoring allowed one; ties go to the lower mean NLL per
  token (the rollout's own preference), then to the earlier sample; a NaN NLL ranks last;
- the target of a step is the ranker's pick when usable, else the best usable sample;
- ReST's Improve threshold: a step whose target scores below ``min_score`` trains nothing;
- each (prompt, target) pair trains once per fine-tune when examples are made distinct;
- with ``rest.keep_trajectories: agreed`` only the trajectories that give their question's
  majority answer train (self-consistency, label-free: ``agreed``);
- with ``rest.policy_examples: improved`` the policy trains only on the steps where the ranker
  improved on it (``improves``); the students distil on every step.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from agent.trajectory import Step, Trajectory
from core.scoring import normalize_answer
from learner.data import SFTExample


def usable(step: Step, i: int) -> bool:
    """Whether sample ``i`` can be a training target: it parsed and is one line."""
    ok = step.parse_ok[i] if i < len(step.parse_ok) else False
    return ok and "\n" not in step.samples[i].text


def floor_unparseable(scores: Sequence[float], parse_ok: Sequence[bool]) -> list[float]:
    """``scores`` with every unparseable sample pushed below every parseable one."""
    out = [float(s) for s in scores]
    good = [s for s, ok in zip(out, parse_ok, strict=True) if ok]
    if good:
        floor = min(good) - 1.0
        out = [s if ok else min(s, floor) for s, ok in zip(out, parse_ok, strict=True)]
    return out


def best_sample(step: Step, scores: Sequence[float], allowed: Sequence[bool] | None = None) -> int | None:
    """Index of the highest-scoring allowed sample (``allowed`` defaults to ``step.parse_ok``);
    ties -> lower mean NLL, then the earlier one; None when no sample is allowed."""
    ok = list(step.parse_ok if allowed is None else allowed)
    if len(scores) != len(step.samples) or len(ok) != len(step.samples):
        raise ValueError(
            f"best_sample: {len(scores)} scores and {len(ok)} parse flags for {len(step.samples)} samples"
        )

    def key(i: int) -> tuple[float, float, int]:
        nll = step.samples[i].mean_nll
        return (-scores[i], math.inf if math.isnan(nll) else nll, i)

    candidates = [i for i in range(len(step.samples)) if ok[i]]
    return min(candidates, key=key) if candidates else None


def tied(step: Step, scores: Sequence[float]) -> bool | None:
    """Whether the ranker left the pick to perplexity: every parseable sample scored the same although
    two of them differ (None when fewer than two different parseable samples leave nothing to rank)."""
    ok = [i for i in range(len(step.samples)) if i < len(step.parse_ok) and step.parse_ok[i]]
    if len({step.samples[i].text for i in ok}) < 2:
        return None
    return len({float(scores[i]) for i in ok}) == 1


def apply_scores(step: Step, scores: Sequence[float]) -> None:
    """Record a ranker's ``scores`` on ``step`` (floored) and its pick in ``step.ranker_best``."""
    if len(scores) != len(step.samples):
        raise ValueError(f"{len(scores)} scores for {len(step.samples)} samples")
    ok = step.parse_ok if len(step.parse_ok) == len(step.samples) else [False] * len(step.samples)
    step.scores = floor_unparseable(scores, ok)
    step.ranker_best = best_sample(step, step.scores, ok)


def target(step: Step) -> int | None:
    """The sample ``step`` trains on: the ranker's pick if usable, else the best-scored usable one
    (no scores: the lowest mean NLL); None when no sample is usable."""
    allowed = [usable(step, i) for i in range(len(step.samples))]
    if step.ranker_best is not None and 0 <= step.ranker_best < len(allowed) and allowed[step.ranker_best]:
        return step.ranker_best
    return best_sample(step, step.scores or [0.0] * len(step.samples), allowed)


def clears(record: dict[str, Any], min_score: float | None) -> bool:
    """Whether a record's target scores at least ``min_score`` (the Improve threshold; None, or a
    step no ranker scored, always clears)."""
    scores = record["scores"]
    return min_score is None or not scores or scores[record["chosen"]] >= min_score


def improves(record: dict[str, Any]) -> bool:
    """Whether a record's target differs from the sample its rollout continued with: a step where the
    ranker's pick improves on what the policy did. The other steps repeat what the policy already
    does, at near-zero loss, and teach it nothing but noise."""
    continued = record["continued"]
    if continued is None or not 0 <= continued < len(record["samples"]):
        return True  # the rollout continued with no sample of this step: the target is all there is
    return record["samples"][record["chosen"]][0] != record["samples"][continued][0]


def to_example(record: dict[str, Any]) -> SFTExample:
    """The training example of a growing-batch record: the step's prompt -> its target + the stop string."""
    return SFTExample(prompt=record["prompt"], completion=record["samples"][record["chosen"]][0] + "\n")


def distinct_examples(examples: Sequence[SFTExample]) -> list[SFTExample]:
    """``examples`` without repeats, first occurrence kept, order otherwise unchanged.

    A policy that has learned its training questions retraces the same steps, so two
    trajectories of one question (or the same question a generation later) give the same
    (prompt, target) again: a repeat adds weight, not information.
    """
    seen: set[tuple[str, str]] = set()
    out = []
    for ex in examples:
        key = (ex.prompt, ex.completion)
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def agreed(trajectories: Iterable[Trajectory], min_agreement: float) -> set[str]:
    """Ids of the trajectories that give their question's majority answer (self-consistency).

    A question's majority answer is the normalised answer more of its trajectories give than
    any other, given by at least two of them and by at least ``min_agreement`` of all its
    trajectories (those that ended without an answer count, and vote for nothing). A tie for
    the most votes is no majority. No label is read: a policy whose trajectories reach one
    answer by different searches and notes is more often right than one that scatters, so
    the batch keeps more of its right trajectories than of its wrong ones.
    """
    by_question: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        by_question[t.question_id].append(t)
    keep: set[str] = set()
    for group in by_question.values():
        votes = Counter(normalize_answer(t.answer) for t in group if t.answer is not None)
        votes.pop("", None)
        ranked = votes.most_common(2)
        if not ranked:
            continue
        answer, count = ranked[0]
        unique = len(ranked) == 1 or ranked[1][1] < count
        if unique and count >= 2 and count >= min_agreement * len(group):
            keep.update(t.id for t in group if t.answer is not None and normalize_answer(t.answer) == answer)
    return keep
