"""The run's cluster: connecting to Ray, and every actor group of a run laid out in one place.

``RunCluster`` is the one object that places, starts and stops the run's actors (OpenRLHF's
``RayActorGroup`` and veRL's ``ResourcePoolManager`` idea): the search actors, the rollout
samplers, the rankers, the learner group and the short-lived eval sampler pools, each with
the CPUs and GPUs the config reserves for it (``reserved`` counts them the same way).
Groups start on first use, or together in parallel with ``start``; ``close`` stops them all.
In a colocated run (``rest.colocate``) the rollout samplers and the learner ranks share one
placement group, a GPU per learner rank, and take turns on it (``gpus_to``, ``rest.colocation``).

``address=None`` starts a local cluster sized for the run: Ray's CPUs are logical, and
the phases of a generation take turns (samplers sample while the learner idles, the
learner trains while the samplers idle), so the embedded cluster declares at least the
CPUs every actor of the run reserves at once, even on a 2-core machine. ``auto`` (a
``ray start``ed node or a ``ray job submit`` job), ``ray://HOST:10001`` (Ray Client) and
a GCS ``HOST:PORT`` connect to a cluster whose resources are real, so the config must fit it:
``check_fits`` refuses a cluster too small for the actors a run holds at once (a plain
``ray start --head`` on a 2-core laptop declares 2 CPUs; the toy run needs 3.5, and its
learner's placement group would otherwise wait forever for the missing half CPU).
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from transformers import AutoModelForCausalLM

from actors.rankers.actor import RankerActor, StepScores
from actors.sampler import RemoteSearch, SamplerActor
from actors.search.actor import SearchActor
from agent.trajectory import Question
from core.config import Config, ConfigError
from core.errors import cause_line
from core.io import write_atomic
from core.run_dir import RunDir
from evals.judge import CheckAnswerJudge, JudgeRuns
from learner.broadcast import weights_checksum
from learner.deepspeed_rank import unique_state
from learner.group import LearnerGroup
from rest.colocation import SharedBundles, Turns
from rest.workers import SamplerPool


class ClusterError(RuntimeError):
    """An actor group failed to start or answer; the message is one line."""

#: environment every actor of an embedded cluster gets
ACTOR_ENV = {"TOKENIZERS_PARALLELISM": "false", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def reserved(cfg: Config, eval_pools: int) -> dict[str, float]:
    """CPUs and GPUs the run's actors reserve with ``eval_pools`` eval sampler pools (and the LLM eval
    judge, if any) alive beside the rollout samplers, the search and ranker actors and the learner ranks
    (colocated: the rollout samplers and the learner ranks together hold a GPU per rank)."""
    r, k, lr, e = cfg.rest, cfg.ranker, cfg.learner, cfg.eval
    pools = 1 + eval_pools
    judges = 1 if e.judge == "llm" and eval_pools else 0
    rollout_and_learner = lr.world_size if cfg.colocated else \
        r.num_samplers * r.sampler_num_gpus + lr.world_size * lr.num_gpus_per_rank
    return {
        "CPU": pools * r.num_samplers * r.sampler_num_cpus + r.num_search_actors * r.search_num_cpus
        + k.num_actors * k.num_cpus + lr.world_size * lr.num_cpus_per_rank + judges * e.judge_num_cpus,
        "GPU": eval_pools * r.num_samplers * r.sampler_num_gpus + k.num_actors * k.num_gpus
        + rollout_and_learner + judges * e.judge_num_gpus,
    }


def peak_cpus(cfg: Config) -> float:
    """CPUs reserved when every actor of a run is alive at once (every model's eval pool side by side)."""
    return reserved(cfg, eval_pools=1 + len(cfg.models.students))["CPU"]


def least_resources(cfg: Config) -> dict[str, float]:
    """What the run cannot do without: one model's eval pool at a time (more run side by side only
    when they fit on GPUs, see ``RunCluster.eval_concurrency``)."""
    return reserved(cfg, eval_pools=1)


def check_fits(cfg: Config) -> None:
    """A ConfigError naming what is short if the connected cluster cannot hold ``least_resources``."""
    have = ray.cluster_resources()
    for kind, need in least_resources(cfg).items():
        if need > have.get(kind, 0.0) + 1e-9:
            raise ConfigError(
                f"the cluster has {have.get(kind, 0.0):g} {kind}s but this run holds {round(need, 3):g} at once "
                f"(rollout and eval samplers, search, ranker and learner actors); start the head with "
                f"`ray start --head --num-{kind.lower()}s {math.ceil(round(need, 3))}` (Ray's {kind}s are reservations, "
                f"not cores) or lower rest.sampler_num_{kind.lower()}s / learner.num_{kind.lower()}s_per_rank")


def connect(address: str | None, cfg: Config, dashboard: bool = True) -> str:
    """Start or join Ray; returns a one-line description (with the dashboard address if any)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address is not None and not (address == "auto" or address.startswith("ray://") or _host_port(address)):
        raise ConfigError(f"--address: expected auto, ray://HOST:PORT or a GCS HOST:PORT, got {address!r}")
    if ray.is_initialized():
        return "ray: already initialised in this process"
    if address is None:
        num_cpus = max(os.cpu_count() or 1, math.ceil(peak_cpus(cfg)))
        ctx = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                       runtime_env={"env_vars": ACTOR_ENV}, logging_level="WARNING")
        where = f"embedded local cluster, {num_cpus} logical CPUs"
    else:
        ctx = ray.init(address=address, logging_level="WARNING")
        check_fits(cfg)
        where = f"cluster at {address}"
    url = getattr(ctx, "dashboard_url", None)
    return f"ray: {where}" + (f"; dashboard http://{url}" if url else "")


def token_problem(path: str | os.PathLike, token: str) -> str | None:
    """None when ``path`` holds ``token``, else what this node sees instead."""
    try:
        got = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        return f"cannot read it: {e.strerror or type(e).__name__}"
    return None if got == token else "it holds another run's token"


@ray.remote(num_cpus=0)
def _read_token(path: str, token: str) -> tuple[str, str | None]:
    return socket.gethostname(), token_problem(path, token)


def check_shared_storage(runs_root: str | os.PathLike, timeout_s: float = 60.0) -> int:
    """Refuse a cluster whose nodes do not all see ``runs_root``; returns how many nodes were checked.

    Learner rank 0 saves checkpoints where it runs and the driver and the samplers open
    them by path on other nodes, so every node must mount the same run storage. The driver
    writes a token under ``runs_root``, a zero-CPU task on every alive node reads it back, and
    a node that cannot is one ConfigError line naming it, before any work starts.
    """
    root = Path(runs_root).resolve()
    token = uuid.uuid4().hex
    path = root / f".storage-check-{token}"
    try:
        write_atomic(path, token)
    except OSError as e:
        raise ConfigError(f"--runs-dir: cannot write in {root}: {e.strerror or e}") from None
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [_read_token.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(path), token) for n in nodes]
        try:
            seen = ray.get(refs, timeout=timeout_s)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
            raise ConfigError(f"--runs-dir: the run storage check did not finish on every node: {cause_line(e)}") \
                from None
    finally:
        path.unlink(missing_ok=True)
    for node, (host, problem) in zip(nodes, seen, strict=True):
        if problem:
            raise ConfigError(
                f"--runs-dir: node {node.get('NodeManagerAddress')} ({host}) does not see {root} ({problem}); "
                f"every node must mount the same run storage (cluster.yaml: 'shared run storage')")
    return len(nodes)


@ray.remote
class JudgeActor:
    """The run's ``Check_Answer`` judge (``evals.judge.CheckAnswerJudge``) on its own engine."""

    def __init__(self, cfg: Config):
        self._judge = CheckAnswerJudge.from_config(cfg)

    def judge(self, items: list[tuple[str, str | None, list[str]]]) -> JudgeRuns:
        return self._judge.judge(items)


class RemoteJudge:
    """``evals.judge.Judge`` through a ``JudgeActor``: one call per evaluation, within the call timeout."""

    def __init__(self, cluster: RunCluster, actor):
        self.cluster, self.actor = cluster, actor

    def judge(self, items: Sequence[tuple[str, str | None, Sequence[str]]]) -> JudgeRuns:
        payload = [(q, a, list(golds)) for q, a, golds in items]
        return self.cluster.get([self.actor.judge.remote(payload)], "eval judge")[0]


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()


class RunCluster:
    """The actor groups of one run (see the module doc); a group starts on first use."""

    GROUPS = ("search", "samplers", "rankers", "learner")

    def __init__(self, cfg: Config, run: RunDir, questions: Sequence[Question], hidden: Callable[[], Collection[str]],
                 version: Callable[[], int], gold: dict[str, dict] | None = None):
        """``questions`` are the rollout's (no gold answers), ``hidden()`` the passages rollouts may not
        see (asked when the search actors start), ``version()`` the policy version a (re)started rollout
        sampler must hold, ``gold`` the question records only an oracle ranker gets."""
        self.cfg, self.run = cfg, run
        self.questions, self.hidden, self.version, self.gold = list(questions), hidden, version, gold
        self._groups: dict[str, Any] = {}
        self._locks = {name: threading.Lock() for name in (*self.GROUPS, "judge", "shared")}
        self._shared: SharedBundles | None = None
        #: who holds the shared GPUs of a colocated run, and every hand-over
        self.turns = Turns()
        self._weights: dict[int, tuple[ray.ObjectRef, str]] = {}
        self._weights_lock = threading.Lock()
        self._names = itertools.count(1)

    # ---------------------------------------------------------------- the groups

    def start(self, groups: Sequence[str] = GROUPS) -> float:
        """Start ``groups`` at once (search first: the samplers use it); returns the seconds it took."""
        t0 = time.perf_counter()
        self.search  # noqa: B018 - started for its side effect
        rest = [g for g in groups if g != "search"]
        with ThreadPoolExecutor(max_workers=max(1, len(rest)), thread_name_prefix="start") as threads:
            for future in [threads.submit(getattr, self, g) for g in rest]:
                future.result()
        return time.perf_counter() - t0

    def started(self, group: str) -> Any | None:
        """Group ``group`` if it has started, else None (it never starts one)."""
        return self._groups.get(group)

    @property
    def search(self) -> list:
        """The search actors the samplers share (sampler i uses actor i mod M)."""
        def make() -> list:
            r = self.cfg.rest
            return [SearchActor.options(num_cpus=r.search_num_cpus, name=self._name(f"search-{i}"))
                    .remote(self.cfg.search, sorted(self.hidden())) for i in range(r.num_search_actors)]
        return self._group("search", make)

    @property
    def samplers(self) -> SamplerPool:
        """The rollout samplers, each brought to the run's current policy version."""
        def make() -> SamplerPool:
            r = self.cfg.rest
            return SamplerPool(lambda slot: self._sampler(slot, self.cfg, self.questions, self.cfg.models.policy,
                                                          self.version(), "sampler", rollout=True,
                                                          shared=self.shared),
                               r.num_samplers, r.call_timeout_s, r.max_task_retries)
        return self._group("samplers", make)

    @property
    def rankers(self) -> list:
        def make() -> list:
            c = self.cfg.ranker
            return [RankerActor.options(num_cpus=c.num_cpus, num_gpus=c.num_gpus, name=self._name(f"ranker-{i}"))
                    .remote(c, self.gold, revisions=self.cfg.models.revisions, engine_cfg=self.cfg.engine)
                    for i in range(c.num_actors)]
        return self._group("rankers", make)

    @property
    def learner(self) -> LearnerGroup:
        return self._group("learner", lambda: LearnerGroup(self.cfg.learner, self.cfg.rest.call_timeout_s,
                                                           shared=self.shared))

    @property
    def shared(self) -> SharedBundles | None:
        """A colocated run's placement group (a GPU per learner rank, shared with the rollout samplers),
        reserved on first use; None when the run is not colocated."""
        if not self.cfg.colocated:
            return None
        with self._locks["shared"]:
            if self._shared is None:
                self._shared = SharedBundles.create(self.cfg, self.cfg.rest.call_timeout_s)
            return self._shared

    def gpus_to(self, side: str, sleep_level: int = 1) -> dict[str, Any]:
        """Colocated: hand the shared GPUs to ``side`` ("samplers" or "learner", ``rest.colocation``):
        for the learner, every rollout sampler sleeps at ``sleep_level`` (2 discards its weights: only
        when a weight sync follows); for the samplers, the learner frees its memory, then every
        sampler wakes. Returns the hand-over and the groups awake after it, for the phase's counters;
        not colocated, every group keeps its GPUs and this does nothing ({}).
        """
        if not self.cfg.colocated:
            return {}
        samplers, learner = self.started("samplers"), self.started("learner")
        event = self.turns.hand_over(side, samplers.actors if samplers else None, learner, sleep_level, self.get)
        return {**event, "awake": self.awake()}

    def awake(self) -> list[str]:
        """The started groups that hold their memory now; colocated, the side without the GPUs is left out
        (the learner between its fits holds nothing, the samplers asleep hold no weights on the device)."""
        asleep = None if not self.cfg.colocated else "learner" if self.turns.holder == "samplers" else "samplers"
        return sorted(g for g in self._groups if g != asleep)

    @property
    def judge(self) -> RemoteJudge:
        """The LLM Check_Answer judge of ``eval.judge=llm`` (started on first use, stopped by ``stop_judge``)."""
        def make() -> RemoteJudge:
            e = self.cfg.eval
            actor = JudgeActor.options(num_cpus=e.judge_num_cpus, num_gpus=e.judge_num_gpus,
                                       name=self._name("eval-judge")).remote(self.cfg)
            return RemoteJudge(self, actor)
        return self._group("judge", make)

    def stop_judge(self) -> None:
        """Stop the eval judge, if it started: it holds its engine (and GPU) only during an eval phase."""
        with self._locks["judge"]:
            judge = self._groups.pop("judge", None)
        if judge is not None:
            ray.kill(judge.actor, no_restart=True)

    def eval_pool(self, cfg: Config, questions: Sequence[Question], model: Callable[[], str], label: str,
                  size: int) -> SamplerPool:
        """``size`` eval samplers (searching the whole corpus), each started holding ``model()``, the
        checkpoint the pool evaluates at that moment (``rest.evaluation.EvalPools`` moves a pool from
        model to model); the caller shuts it down."""
        return SamplerPool(lambda slot: self._sampler(slot, cfg, list(questions), model(), 0, label, rollout=False),
                           size, cfg.rest.call_timeout_s, cfg.rest.max_task_retries, what=f"eval sampler ({label})")

    def eval_concurrency(self, models: int) -> int:
        """How many eval pools work side by side: on GPUs, as many whole pools as the free resources
        hold; on CPUs, one, moved from model to model.

        A CPU pool's replicas already share the cores every actor of the run shares (the embedded
        cluster declares more CPUs than it has), so a second pool only adds replica starts, the
        larger part of evaluating a small model (docs/performance.md). Pools start their actors
        one by one, so two pools sharing too few GPUs could each wait for the other's; whole pools
        only never deadlock.
        """
        r = self.cfg.rest
        if r.sampler_num_gpus <= 0:
            return 1
        need = {"CPU": r.num_samplers * r.sampler_num_cpus, "GPU": r.num_samplers * r.sampler_num_gpus}
        free = ray.available_resources()
        fits = [int(free.get(k, 0.0) // v) for k, v in need.items() if v > 0]
        return max(1, min([models, *fits]))

    # ---------------------------------------------------------------- calls across a group

    def rank(self, trajectories: list[dict], on_chunk: Callable[[int], None] = lambda n: None) -> StepScores:
        """Every LLM step's scores, the trajectories dealt to the rankers in chunks (4 per ranker)."""
        rankers = self.rankers
        n_chunks = max(1, min(len(trajectories), 4 * len(rankers)))
        chunks = [trajectories[i::n_chunks] for i in range(n_chunks)]
        timeout = self.cfg.rest.call_timeout_s
        refs = {rankers[i % len(rankers)].rank.remote(chunk): i for i, chunk in enumerate(chunks)}
        deadline = time.monotonic() + timeout * -(-n_chunks // len(rankers))
        scores: StepScores = {}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise ClusterError("rankers did not finish within the call timeout")
            for ref in ready:
                i = refs.pop(ref)
                scores.update(self.get([ref], "ranker")[0])
                on_chunk(len(chunks[i]))
        return scores

    def ranker_stats(self) -> dict[str, Any]:
        """The rankers' counters since the last call (one rank phase's), summed; text fields from the last
        ranker that has them."""
        out: dict[str, Any] = {}
        for stats in self.get([r.take_stats.remote() for r in self.rankers], "ranker stats"):
            for k, v in stats.items():
                out[k] = out.get(k, 0) + v if isinstance(v, int) else v
        return out

    def load_checkpoint_weights(self, version: int) -> str:
        """Every rollout sampler loads L's gen-``version`` checkpoint; returns the checksum they all verified."""
        ref, checksum = self._checkpoint_weights(version)
        got = self.get([a.load_weights.remote(ref, version, checksum) for a in self.samplers.actors], "load weights")
        if set(got) != {checksum}:
            raise ClusterError(f"load weights v{version}: a sampler acknowledged a different checksum")
        return checksum

    def hidden_passages(self) -> int:
        """Held-out passages the search actors have kept from rollouts so far."""
        return sum(s["hidden"] for s in self.get([a.stats.remote() for a in self.search], "search stats"))

    def get(self, refs: list, what: str) -> list:
        """``ray.get`` within the call timeout; a timeout or remote failure is one ClusterError line."""
        try:
            return ray.get(refs, timeout=self.cfg.rest.call_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"{what}: no answer within {self.cfg.rest.call_timeout_s:.0f} s") from None
        except ray.exceptions.RayError as e:
            raise ClusterError(f"{what}: {cause_line(e)}") from None

    def close(self) -> None:
        """Stop every actor of the run (safe to call twice)."""
        self.stop_judge()
        groups, self._groups = self._groups, {}
        if "samplers" in groups:
            groups["samplers"].shutdown()
        if "learner" in groups:
            groups["learner"].shutdown()
        for actor in [*groups.get("rankers", []), *groups.get("search", [])]:
            ray.kill(actor, no_restart=True)
        shared, self._shared = self._shared, None
        if shared is not None:  # after its actors: the learner's ranks and the rollout samplers
            shared.remove()
        self.turns = Turns()

    # ---------------------------------------------------------------- helpers

    def _group(self, name: str, make: Callable[[], Any]) -> Any:
        with self._locks[name]:
            if name not in self._groups:
                self._groups[name] = make()
            return self._groups[name]

    def _sampler(self, slot: int, cfg: Config, questions: list[Question], model: str, version: int, label: str,
                 rollout: bool, shared: SharedBundles | None = None):
        """A ready sampler actor holding ``model``, brought to policy ``version`` from L's checkpoint; a
        ``rollout`` sampler's searches skip the held-out passages (``rest.leakage``), an eval sampler's do not.
        With ``shared`` (a colocated rollout sampler) it takes its share of bundle ``slot`` mod W's GPU,
        beside learner rank ``slot`` mod W, and its engine can sleep."""
        search = RemoteSearch(self.search[slot % len(self.search)], cfg.rest.call_timeout_s, hide_held_out=rollout)
        where = {"num_gpus": cfg.rest.sampler_num_gpus} if shared is None else \
            {"num_gpus": shared.share, "scheduling_strategy": shared.strategy(slot)}
        actor = SamplerActor.options(
            num_cpus=cfg.rest.sampler_num_cpus, name=self._name(f"{label}-{slot}"), **where,
        ).remote(cfg, questions, search, replica=slot, model=model, sleep_mode=shared is not None)
        if version > 0:
            ref, checksum = self._checkpoint_weights(version)
            self.get([actor.load_weights.remote(ref, version, checksum)], f"{label} {slot} load weights")
        (got,) = self.get([actor.ping.remote()], f"{label} {slot} start")
        if got != version:
            raise ClusterError(f"{label} {slot} started at version {got}, expected {version}")
        return actor

    def _checkpoint_weights(self, version: int) -> tuple[ray.ObjectRef, str]:
        """L's gen-``version`` checkpoint as the learner broadcasts it (object ref, checksum), loaded once."""
        with self._weights_lock:  # samplers start in threads, and transformers' loading is not thread-safe
            if version not in self._weights:
                model = AutoModelForCausalLM.from_pretrained(str(self.run.checkpoint("L", version)), dtype="auto",
                                                             use_safetensors=True)
                state = unique_state(model)
                self._weights[version] = (ray.put(state), weights_checksum(state))
            return self._weights[version]

    def _name(self, what: str) -> str:
        # samplers start in parallel threads: itertools.count hands out numbers atomically
        return f"{self.run.name}.{what}.{next(self._names)}"

