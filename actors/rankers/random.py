"""The control ranker: uniform random scores, reproducible from the seed, question and step.

Reseeded per step from ``(seed, question id, step index)``, so a step's scores do not
depend on which other steps or trajectories were ranked with it, or in what order.
"""

from __future__ import annotations

import hashlib
import random

from actors.rankers.base import StepContext
from agent.trajectory import Step


class RandomRanker:
    """Scores every sample uniformly in [0, 1): what a ranker with no information would do."""

    name = "random"

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"random ranker: seed must be an int, got {seed!r}")
        self.seed = seed

    def score(self, step: Step, ctx: StepContext) -> list[float]:
        key = f"random-ranker:{self.seed}:{ctx.question_id}:{ctx.step_index}".encode()
        rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
        return [rng.random() for _ in step.samples]
