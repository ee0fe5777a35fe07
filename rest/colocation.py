"""The colocated mode (``rest.colocate``): rollout samplers and learner ranks take turns on the same GPUs.

Separate, every group holds its own GPUs for the whole run, so during a rollout the
learner's GPUs idle and during a fit the samplers' do. Colocated (OpenRLHF's
``colocate_all`` and veRL's hybrid engine do the same), the run holds one placement group
of W bundles, one GPU each (W = ``learner.world_size``): learner rank i and the rollout
samplers i, i + W, i + 2W, ... are scheduled into bundle i, each with a fraction of its GPU
(``SharedBundles.share``; the fractions add up to the one GPU, so Ray places them together
and nothing else lands there). Rollouts then run on all W GPUs as data-parallel replicas.

The GPUs belong to one side at a time (``Turns``, driven by ``RunCluster.gpus_to``):

- the learner's turn (before a fit): every rollout sampler sleeps: vLLM frees its KV
  cache and offloads (level 1) or discards (level 2) its weights, the transformers
  engine moves (1) or drops (2) its parameters (``actors.engines``);
- the samplers' turn (after a fit, before the weight sync, and before a rollout): the
  learner ranks free what they hold (``LearnerRank.release_memory``), then every
  sampler wakes; after a level-2 sleep a sampler holds no policy (version -1) until the
  sync refills it.

A CPU machine can declare logical GPUs to Ray (``ray.init(num_gpus=2)``), so the placement
and the turns run the same there (tests do); nothing then touches CUDA, because every
engine and rank asks torch whether CUDA is there, not Ray.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from core.config import Config

#: the sides that take turns on the shared GPUs
SIDES = ("samplers", "learner")


def samplers_per_gpu(cfg: Config) -> int:
    """How many rollout samplers share each learner rank's GPU (``colocation_problem`` makes it whole)."""
    return cfg.rest.num_samplers // cfg.learner.world_size


def gpu_share(samplers_per_gpu: int) -> float:
    """Each colocated actor's fraction of its bundle's GPU: the learner rank and ``samplers_per_gpu``
    samplers split one GPU evenly, rounded down to Ray's 1e-4 resource grain so the shares fit."""
    return math.floor(10_000 / (1 + samplers_per_gpu)) / 10_000


def bundle_spec(cfg: Config) -> dict[str, float]:
    """One shared bundle: a GPU, and the CPUs of a learner rank and of the samplers that share it."""
    cpus = cfg.learner.num_cpus_per_rank + samplers_per_gpu(cfg) * cfg.rest.sampler_num_cpus
    return {"GPU": 1.0, **({"CPU": cpus} if cpus > 0 else {})}


@dataclass
class SharedBundles:
    """A colocated run's placement group: ``bundles`` GPUs, each shared by a learner rank and
    ``samplers_per_gpu`` rollout samplers (see the module doc); the cluster owns and removes it."""

    pg: PlacementGroup
    bundles: int
    samplers_per_gpu: int

    @classmethod
    def create(cls, cfg: Config, timeout_s: float) -> SharedBundles:
        """Reserve the bundles (PACK: as few nodes as Ray can); a RuntimeError if not ready within ``timeout_s``."""
        w = cfg.learner.world_size
        spec = bundle_spec(cfg)
        pg = placement_group([dict(spec) for _ in range(w)], strategy="PACK")
        try:
            ray.get(pg.ready(), timeout=timeout_s)
        except GetTimeoutError:
            remove_placement_group(pg)
            raise RuntimeError(
                f"colocation: placement group of {w} x {spec} not ready within {timeout_s:.0f} s "
                f"(cluster has {ray.available_resources()})") from None
        return cls(pg, w, samplers_per_gpu(cfg))

    @property
    def share(self) -> float:
        """The GPU fraction every actor in a bundle asks for (``gpu_share``)."""
        return gpu_share(self.samplers_per_gpu)

    def strategy(self, slot: int) -> PlacementGroupSchedulingStrategy:
        """Where learner rank ``slot``, or rollout sampler ``slot``, runs: bundle ``slot mod bundles``."""
        return PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=slot % self.bundles)

    def remove(self) -> None:
        remove_placement_group(self.pg)


@dataclass
class Turns:
    """Who holds the shared GPUs, and the record of every hand-over (what the phases' metrics show).

    ``holder`` starts as the samplers: a fresh sampler starts awake, and a fresh learner
    rank holds nothing until it fits.
    """

    holder: str = "samplers"
    log: list[dict[str, Any]] = field(default_factory=list)

    def hand_over(self, to: str, samplers: list | None, learner: Any | None, level: int,
                  get: Callable[[list, str], list]) -> dict[str, Any]:
        """Give the GPUs to ``to`` ("samplers" or "learner"); returns what happened.

        ``samplers``: the rollout sampler actors, None when they have not started (nothing to
        put to sleep or wake); ``learner``: the ``LearnerGroup``, None when not started;
        ``level``: how deeply the samplers sleep on the learner's turn; ``get``: the
        cluster's bounded ``ray.get``. Handing the GPUs to their holder does nothing.
        """
        if to not in SIDES:
            raise ValueError(f"colocation: the GPUs go to one of {', '.join(SIDES)}, got {to!r}")
        if level not in (1, 2):
            raise ValueError(f"colocation: sleep level must be 1 or 2, got {level!r}")
        event: dict[str, Any] = {"to": to, "from": self.holder}
        if to == self.holder:
            return {**event, "changed": False}
        t0 = time.perf_counter()
        if to == "learner":
            if samplers:
                slept = get([a.sleep.remote(level) for a in samplers], "colocated samplers sleep")
                event["sampler_sleep_level"] = level
                event["sampler_freed_bytes"] = sum(s["freed_bytes"] for s in slept)
        else:
            if learner is not None:
                event["learner_freed_bytes"] = learner.release_memory()
            if samplers:
                woke = get([a.wake.remote() for a in samplers], "colocated samplers wake")
                event["sampler_versions"] = [w["version"] for w in woke]
        event["seconds"] = round(time.perf_counter() - t0, 3)
        self.holder = to
        self.log.append(event)
        return {**event, "changed": True}
