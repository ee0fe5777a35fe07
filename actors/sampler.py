"""The sampler: an inference engine plus the episode runner, tagged with a policy version.

``Sampler`` is a plain class (tests use it without Ray); ``SamplerActor`` is its Ray
shim, placed by the driver with ``.options(num_cpus=..., num_gpus=...)``. A sampler
takes a batch of question ids and returns their trajectories, each stamped with the
policy version of the weights that produced them. Weight sync is a checked protocol:
``rollout`` refuses work (``StaleWeights``) unless the sampler holds exactly the
version the driver expects, and new weights are loaded only after their checksum
matches (object store: ``load_weights``; collective: ``join_weight_group`` then
``receive_weights``).

``RemoteSearch`` lets a sampler search through a ``SearchActor``: every call is a
``ray.get`` with a timeout, and any failure (timeout, dead actor, remote error) is a
``SearchError``, which the runner turns into ``search_failed`` episodes, never a hang.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import ray
import torch

from actors.engines import make_engine
from actors.rankers import make_ranker
from actors.rankers.base import StepRanker, step_contexts
from agent.episode import Chooser, Episode
from agent.runner import EpisodeRunner
from agent.trajectory import Question, Step, Trajectory
from core.config import Config
from core.engine import Engine
from core.errors import StaleWeights, one_line
from core.search import Passage, SearchBackend, SearchError
from learner.broadcast import WeightGroup, device_key, receive_buckets, weights_checksum
from learner.selection import best_sample


class Sampler:
    """An engine + ``EpisodeRunner`` over a fixed question set (see the module doc).

    The engine is built from ``cfg.engine`` with its model replaced by ``model`` (or
    ``cfg.models.policy``; ``cfg.engine.model`` when both are empty). ``search=None``
    runs closed book. The sampler starts at policy version 0.
    """

    def __init__(
        self,
        cfg: Config,
        questions: Sequence[Question],
        search: SearchBackend | None,
        replica: int = 0,
        model: str | None = None,
        sleep_mode: bool = False,
    ):
        torch.set_num_threads(cfg.engine.threads)
        self.cfg = cfg
        self.replica = replica
        self.sleep_mode = sleep_mode
        self.questions: dict[str, Question] = {}
        for q in questions:
            if q.id in self.questions:
                raise ValueError(f"sampler: question id {q.id!r} appears twice")
            self.questions[q.id] = q
        self.engine: Engine = self._make_engine(model or cfg.models.policy or cfg.engine.model)
        self.version = 0
        self.ranker: StepRanker | None = None
        if cfg.rest.continue_with == "ranker":
            if cfg.ranker.kind == "oracle":
                raise ValueError(
                    "rest.continue_with=ranker cannot use ranker.kind=oracle: samplers never see gold answers"
                )
            self.ranker = make_ranker(cfg.ranker, revisions=cfg.models.revisions, engine_cfg=cfg.engine)
        self.runner = RankedRunner(self.engine, search, cfg.agent, self.ranker)
        self.rollouts = 0
        #: wall and CPU time inside ``rollout`` calls (the runner's time plus turning trajectories into dicts)
        self.rollout_seconds = 0.0
        self.rollout_cpu_seconds = 0.0
        self._group: WeightGroup | None = None

    def rollout(
        self, question_ids: Sequence[str], expected_version: int, trajectories_per_question: int, seed: int
    ) -> list[dict]:
        """Trajectories (``Trajectory.to_dict()``) for each question id, ``trajectories_per_question`` each."""
        if self.asleep:
            raise RuntimeError(f"sampler {self.replica} is asleep (a colocated learner holds the GPU): wake it first")
        if self.version != expected_version:
            raise StaleWeights(
                f"sampler {self.replica} holds weights v{self.version}, driver expects v{expected_version}"
            )
        missing = [qid for qid in question_ids if qid not in self.questions]
        if missing:
            raise KeyError(f"sampler {self.replica}: unknown question id {missing[0]!r}")
        start, cpu = time.perf_counter(), time.process_time()
        self.runner.cfg = dataclasses.replace(self.cfg.agent, seed=seed)
        self.runner.policy_version = self.version
        trajs = self.runner.run([self.questions[qid] for qid in question_ids], trajectories_per_question)
        out = [t.to_dict() for t in trajs]
        self.rollouts += 1
        self.rollout_seconds += time.perf_counter() - start
        self.rollout_cpu_seconds += time.process_time() - cpu
        return out

    def _make_engine(self, model: str) -> Engine:
        engine_cfg = dataclasses.replace(self.cfg.engine, model=model)
        return make_engine(engine_cfg, revision=self.cfg.models.revisions.get(model), sleep_mode=self.sleep_mode)

    # ------------------------------------------------------------ colocation

    @property
    def asleep(self) -> bool:
        return bool(getattr(self.engine, "asleep", False))

    def sleep(self, level: int = 1) -> dict:
        """Free the engine's memory for the learner that shares this sampler's GPU (``rest.colocation``):
        the engine's ``sleep`` at ``level``. Returns the device bytes freed and the seconds it took."""
        if not self.sleep_mode:
            raise RuntimeError(f"sampler {self.replica} was started without sleep_mode (not colocated)")
        freed, seconds = self.engine.sleep(level)
        return {"replica": self.replica, "freed_bytes": int(freed), "seconds": seconds}

    def wake(self) -> dict:
        """Undo ``sleep``; returns the seconds it took and the policy version held (-1 after a level-2 sleep:
        the weights were discarded, the next sync refills them). An awake sampler (a replica started
        while the others slept) has nothing to undo."""
        seconds = self.engine.wake() if self.asleep else 0.0
        if self.engine.version < 0:
            self.version = -1
        return {"replica": self.replica, "seconds": seconds, "version": self.version}

    def use_model(self, model: str) -> int:
        """Hold ``model`` from now on, at policy version 0 (an eval pool moving on to its next model: a
        new engine costs far less than a new actor, whose worker imports torch before it loads anything).

        The old engine is closed first, so two never share the memory; if the new one fails to load, the
        sampler refuses work (version -1) and its pool replaces it.
        """
        if self._group is not None:
            raise RuntimeError(f"sampler {self.replica}: use_model inside a weight group")
        self.engine.close()
        self.version = -1
        self.engine = self.runner.engine = self._make_engine(model)
        self.version = 0
        return self.version

    # ------------------------------------------------------------ weights

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int, checksum: str) -> str:
        """Load ``state`` as policy ``version`` once its checksum matches; returns the checksum."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"sampler {self.replica}: version must be an int >= 0, got {version!r}")
        got = weights_checksum(state)
        if got != checksum:
            raise ValueError(
                f"sampler {self.replica}: weights checksum mismatch for v{version}: "
                f"received {got[:16]}..., expected {str(checksum)[:16]}..."
            )
        self.engine.load_weights(state, version)
        self.version = version
        return got

    def join_weight_group(self, master_addr: str, master_port: int, rank: int, world_size: int,
                          backend: str = "gloo") -> None:
        """Join the learner's weight-broadcast group as ``rank`` (>= 1; rank 0 is the learner): an engine
        that receives weights itself (vLLM: its worker) joins, otherwise this actor does."""
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"sampler {self.replica}: weight group rank must be >= 1 (0 is the learner), got {rank!r}")
        self.leave_weight_group()
        timeout = self.cfg.rest.call_timeout_s
        if hasattr(self.engine, "join_weight_group"):
            self.engine.join_weight_group(master_addr, master_port, rank, world_size, timeout, backend)
            self._group = self.engine
        else:
            self._group = WeightGroup(master_addr, master_port, rank, world_size, timeout, backend)

    def device_key(self) -> str | None:
        """The GPU this sampler's engine runs on (``learner.broadcast.device_key``), for the weight group's backend."""
        return device_key()

    def receive_weights(self, version: int, checksum: str, meta: list, plan: list) -> str:
        """Receive rank 0's bucketed broadcast as policy ``version``; returns the checksum it was sent under.

        Into an engine that receives itself, the buckets stream straight into the model, each checked by
        its fingerprint; a failure there leaves the weights half-loaded, so this sampler then refuses
        work (version -1) until the next sync. Otherwise the buckets become a state dict whose sha256 is
        checked before it is loaded.
        """
        if self._group is None:
            raise RuntimeError(f"sampler {self.replica}: receive_weights before join_weight_group")
        if self._group is self.engine:
            try:
                self.engine.receive_weights(meta, plan, version)
            except BaseException:
                self.version = -1
                raise
            self.version = version
            return checksum
        state = dict(receive_buckets(self._group, meta, plan))  # views into per-bucket buffers of their own
        return self.load_weights(state, version, checksum)

    def leave_weight_group(self) -> None:
        """Close the weight group (the driver calls it at shutdown); safe without one."""
        group, self._group = self._group, None
        if group is not None:
            (group.leave_weight_group if group is self.engine else group.close)()

    # ------------------------------------------------------------ health

    def stats(self) -> dict:
        """The runner's counters plus this sampler's replica, version, torch threads and time in rollouts."""
        return {"replica": self.replica, "version": self.version, "asleep": self.asleep, "rollouts": self.rollouts,
                "torch_threads": torch.get_num_threads(), "rollout_seconds": self.rollout_seconds,
                "rollout_cpu_seconds": self.rollout_cpu_seconds, **self.runner.stats.to_dict()}

    def ping(self) -> int:
        return self.version


class RankedRunner(EpisodeRunner):
    """``EpisodeRunner`` that, given a ranker, continues each step with the ranker's best sample.

    The ranker scores a step from the trajectory so far, so each episode gets its own
    chooser bound to its trajectory. Without a ranker it is the plain runner
    (lowest perplexity).
    """

    def __init__(self, engine: Engine, search: SearchBackend | None, cfg, ranker: StepRanker | None):
        super().__init__(engine, search, cfg)
        self.ranker = ranker

    def _new_episode(self, q: Question, j: int) -> Episode:
        ep = super()._new_episode(q, j)
        if self.ranker is not None:
            ep.choose = self._timed(ranker_chooser(self.ranker, ep.traj))
        return ep

    def _timed(self, choose: Chooser) -> Chooser:
        """``choose`` adding its time to ``stats.rank_seconds`` (profiling: ranking inside the rollout)."""

        def timed(step: Step, parsed: list[object | None]) -> int | None:
            t0 = time.perf_counter()
            try:
                return choose(step, parsed)
            finally:
                self.stats.rank_seconds += time.perf_counter() - t0

        return timed


def ranker_chooser(ranker: StepRanker, traj: Trajectory) -> Chooser:
    """A chooser for ``traj``'s episode: the ranker's best parseable sample (ties: lower NLL).

    The episode appends the step to ``traj`` before it chooses, so the step is the
    trajectory's last and its context is what came before it. The chooser records the
    scores and the pick on the step.
    """

    def choose(step: Step, parsed: list[object | None]) -> int | None:
        if not traj.steps or traj.steps[-1] is not step:
            raise RuntimeError("ranker chooser: the step is not the last step of its trajectory")
        _, ctx = step_contexts(traj)[-1]
        scores = ranker.score(step, ctx)
        step.scores = [float(s) for s in scores]
        step.ranker_best = best_sample(step, step.scores, [p is not None for p in parsed])
        return step.ranker_best

    return choose


class RemoteSearch:
    """A ``SearchBackend`` over a ``SearchActor``: bounded waits, every failure a ``SearchError``.

    ``hide_held_out``: ask the actor to skip its held-out passages (the ReST driver's
    training rollouts; see ``actors.search.actor``).
    """

    def __init__(self, actor, timeout_s: float, hide_held_out: bool = False):
        if not timeout_s > 0:
            raise ValueError(f"RemoteSearch: timeout_s must be > 0, got {timeout_s!r}")
        self.actor = actor
        self.timeout_s = float(timeout_s)
        self.hide_held_out = hide_held_out

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        try:
            ref = self.actor.search.remote(list(queries), topk, self.hide_held_out)
            return ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            _cancel(ref)
            raise SearchError(f"search actor did not answer within {self.timeout_s:g}s") from None
        except Exception as e:  # dead actor, remote error, serialization: the runner records it
            raise SearchError(f"search actor failed: {type(e).__name__}: {one_line(e, 200)}") from None


def _cancel(ref) -> None:
    """Best effort: drop a timed-out search still queued on the actor (a running one cannot be stopped)."""
    try:
        ray.cancel(ref)
    except Exception:  # cancelling is only a courtesy; the caller already reports the timeout
        pass


SamplerActor = ray.remote(Sampler)
