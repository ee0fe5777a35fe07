"""The ranker actor: one ranker kind scoring every LLM step of whole trajectories.

``TrajectoryRanker`` is the plain class, ``RankerActor`` its Ray shim. Trajectories (as
dicts) go in; out comes one list of scores per LLM step, keyed by (trajectory id, step
index). The driver records them on the steps and picks each step's best sample through
``learner.selection``, the one place that rule lives.
"""

from __future__ import annotations

from collections.abc import Mapping

import ray

from actors.rankers import make_ranker
from actors.rankers.base import StepContext, step_contexts
from agent.trajectory import Step, Trajectory
from core.config import EngineConfig, RankerConfig
from core.engine import Engine

#: (trajectory id, step index) -> one score per sample of that LLM step
StepScores = dict[tuple[str, int], list[float]]


class TrajectoryRanker:
    """Scores every LLM step of whole trajectories with the ranker ``cfg.kind`` names.

    ``gold`` maps question id -> question record (``hops``, ``gold_facts``, ``answers``)
    and is used by the oracle only: other rankers never receive it.
    """

    def __init__(self, cfg: RankerConfig, gold: Mapping[str, dict] | None = None, engine: Engine | None = None,
                 revisions: Mapping[str, str] | None = None, engine_cfg: EngineConfig | None = None):
        if cfg.kind == "oracle" and gold is None:
            raise ValueError("the oracle ranker needs gold question records (toy world only)")
        self.cfg = cfg
        self.gold = dict(gold) if cfg.kind == "oracle" and gold is not None else None
        self.ranker = make_ranker(cfg, engine, revisions, engine_cfg)
        self.counts = {"trajectories": 0, "steps": 0}
        self._taken: dict = {}

    def rank(self, trajectories: list[dict]) -> StepScores:
        """One score per sample of every LLM step that has samples, keyed by (trajectory id, step index)."""
        trajs = [Trajectory.from_dict(d) for d in trajectories]
        items: list[tuple[str, Step, StepContext]] = []
        for t in trajs:
            items.extend((t.id, step, ctx) for step, ctx in step_contexts(t, self._gold_of(t.question_id)))
        scored = self._score_all([(step, ctx) for _, step, ctx in items])
        out: StepScores = {}
        for (traj_id, step, ctx), scores in zip(items, scored, strict=True):
            if len(scores) != len(step.samples):
                raise RuntimeError(f"ranker {self.ranker.name} gave {len(scores)} scores for {len(step.samples)} samples")
            out[(traj_id, ctx.step_index)] = [float(s) for s in scores]
        self.counts["steps"] += len(items)
        self.counts["trajectories"] += len(trajs)
        return out

    def stats(self) -> dict:
        """Counters over this ranker's lifetime (plus the judge's verdicts and fallbacks, for llm-judge)."""
        extra = getattr(self.ranker, "stats", None)
        return {"ranker": self.ranker.name, **self.counts, **(extra() if callable(extra) else {})}

    def take_stats(self) -> dict:
        """The counters since the last ``take_stats`` (one rank phase's), other fields as they are now."""
        now = self.stats()
        out = {k: v - self._taken.get(k, 0) if isinstance(v, int) else v for k, v in now.items()}
        self._taken = {k: v for k, v in now.items() if isinstance(v, int)}
        if not out.get("fallback_unparseable"):  # the latest unparsed verdict is an earlier phase's
            out.pop("last_unparsed", None)
        return out

    def _gold_of(self, question_id: str) -> dict | None:
        if self.gold is None:
            return None
        if question_id not in self.gold:
            raise KeyError(f"no gold record for question {question_id!r} (the oracle needs one per question)")
        return self.gold[question_id]

    def _score_all(self, items: list[tuple[Step, StepContext]]) -> list[list[float]]:
        batch = getattr(self.ranker, "score_batch", None)
        if callable(batch):
            return batch(items)
        return [self.ranker.score(step, ctx) for step, ctx in items]


RankerActor = ray.remote(TrajectoryRanker)
