"""The learner group: W DeepSpeed ranks as Ray actors, fine-tuning and broadcasting weights.

Layout (the OpenRLHF ``RayActorGroup`` idea): one placement group with a bundle per
rank (its own, or in a colocated run the run's shared one, ``rest.colocation``, where
rank i takes a share of bundle i's GPU beside the rollout samplers); rank 0 starts
first and names the address and free port of the process group's store, then ranks
1..W-1 start, and all W join at once. Methods named
``async_*`` return lists of ObjectRefs; every other method waits, always with a
timeout, and turns a dead or failed rank into one clear RuntimeError (the group is
then broken: shut it down and build a new one).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from core.config import LearnerConfig
from core.errors import cause_line
from learner.broadcast import group_backend
from learner.data import SFTExample
from learner.deepspeed_rank import LearnerRank

log = logging.getLogger(__name__)

LearnerRankActor = ray.remote(LearnerRank)


class SharedPlacement(Protocol):
    """A colocated run's placement group, a GPU per rank that rollout samplers share (the run's, not the
    group's: ``rest.colocation.SharedBundles`` is one): how many bundles, the GPU fraction each actor in
    a bundle asks for, and where actor ``slot`` runs."""

    bundles: int

    @property
    def share(self) -> float: ...

    def strategy(self, slot: int) -> PlacementGroupSchedulingStrategy: ...

TRANSPORTS = ("object_store", "collective")


@dataclass
class FitResult:
    """One fine-tune: losses per step (mean over ranks), the checkpoint dir and throughput."""

    model: str
    out_dir: str
    losses: list[float]
    steps: int
    examples: int
    seconds: float
    tokens_per_s: float


@dataclass
class BroadcastResult:
    """One weight broadcast: the version and checksum every sampler verified, and its cost."""

    version: int
    checksum: str
    transport: str
    seconds: float
    bytes: int
    #: Ray calls this sync made (a collective's first also builds the weight group)
    ray_calls: int = 0


def _describe(name: str, e: BaseException) -> tuple[bool, str]:
    """(whether the actor died, "NAME died|failed: message") for one failed call."""
    died = isinstance(e, RayActorError)
    return died, f"{name} {'died' if died else 'failed'}: {cause_line(e)}"


def wait_all(refs: Sequence[ray.ObjectRef], names: Sequence[str], timeout_s: float, what: str) -> list:
    """Results of ``refs`` in order; the first failure or the timeout raises one RuntimeError.

    Waits on whichever finishes first, so a dead actor is reported at once, not after
    the others' calls (which may be blocked on it in a collective). After a failure
    the others get a few seconds to fail too, and dead actors are named first.
    """
    pending = dict(zip(refs, names, strict=True))
    results: dict[ray.ObjectRef, object] = {}
    deadline = time.monotonic() + timeout_s
    errors: list[tuple[bool, str]] = []
    while pending and not errors:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise RuntimeError(
                f"{what} did not finish within {timeout_s:.0f} s (still running: {', '.join(pending.values())})"
            )
        for ref in ready:
            name = pending.pop(ref)
            try:
                results[ref] = ray.get(ref, timeout=5)
            except (RayActorError, RayTaskError, GetTimeoutError) as e:
                errors.append(_describe(name, e))
    if errors:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=3.0) if pending else ([], [])
        for ref in ready:
            try:
                ray.get(ref, timeout=1)
            except (RayActorError, RayTaskError, GetTimeoutError) as e:
                errors.append(_describe(pending[ref], e))
        errors.sort(key=lambda x: not x[0])
        raise RuntimeError(f"{what} failed: " + "; ".join(msg for _, msg in errors))
    return [results[r] for r in refs]


class LearnerGroup:
    """``cfg.world_size`` DeepSpeed ranks in one placement group, rank 0 first.

    ``fit`` reads the training fields of ``self.cfg`` (ZeRO stage, precision, lr,
    batch...) at call time; the layout fields (world size, resources, backend) are
    fixed at construction. ``control_timeout_s`` bounds start-up and the broadcast.
    """

    def __init__(self, cfg: LearnerConfig, control_timeout_s: float = 180.0, shared: SharedPlacement | None = None):
        """``shared``: place rank i in bundle i of a colocated run's placement group (``rest.colocation``)
        with that bundle's GPU share, instead of a placement group of the group's own."""
        if not ray.is_initialized():
            raise RuntimeError("LearnerGroup: call ray.init() first")
        self.cfg = cfg
        self.control_timeout_s = control_timeout_s
        self.shared = shared
        #: the process group's backend, fixed once rank 0 says whether it sees CUDA (``_backend``)
        self.backend: str | None = None
        #: the weight group's backend once formed (``learner.broadcast.group_backend``)
        self.weight_backend: str | None = None
        self.ranks: list = []
        self.broken: str | None = None
        self.last_fit: dict | None = None
        """The last successful fit: name, out_dir, checksum of its weights, DeepSpeed ops built at run time,
        and its memory settings as the ranks applied them (micro-batch, accumulation, checkpointing,
        attention kernel, zero.Init, parameter dtype)."""
        self._weight_key: tuple | None = None
        self._pg = None
        if shared is not None:
            if shared.bundles != cfg.world_size:
                raise ValueError(f"LearnerGroup: {shared.bundles} shared bundles for {cfg.world_size} ranks")
            self._gpus = shared.share
        else:
            self._gpus = cfg.num_gpus_per_rank
            bundle = {"CPU": cfg.num_cpus_per_rank}
            if cfg.num_gpus_per_rank > 0:
                bundle["GPU"] = cfg.num_gpus_per_rank
            bundle = {k: v for k, v in bundle.items() if v > 0}
            if not bundle:
                raise ValueError("LearnerGroup: num_cpus_per_rank and num_gpus_per_rank are both 0")
            self._pg = placement_group([dict(bundle) for _ in range(cfg.world_size)], strategy="PACK")
        try:
            self._start()
        except BaseException:
            self.shutdown()
            raise

    @staticmethod
    def _backend(cfg: LearnerConfig, cuda: bool) -> str:
        """``cfg.backend``, or for auto NCCL where the ranks hold GPUs that CUDA sees (rank 0 answers
        ``cuda``) and gloo elsewhere: a CPU machine may declare logical GPUs to Ray (tests do)."""
        if cfg.backend != "auto":
            return cfg.backend
        return "nccl" if cfg.num_gpus_per_rank > 0 and cuda else "gloo"

    def _start(self) -> None:
        if self._pg is not None:
            try:
                ray.get(self._pg.ready(), timeout=self.control_timeout_s)
            except GetTimeoutError:
                raise RuntimeError(
                    f"learner: placement group of {self.cfg.world_size} x {self._pg.bundle_specs[0]} not ready "
                    f"within {self.control_timeout_s:.0f} s (cluster has {ray.available_resources()})"
                ) from None
        self.ranks.append(self._make_rank(0))
        addr, port = wait_all(
            [self.ranks[0].rendezvous.remote()], ["learner rank 0"], self.control_timeout_s, "learner start"
        )[0]
        cuda = self._rank0_call(self.ranks[0].cuda_available.remote(), "cuda_available")
        self.backend = self._backend(self.cfg, cuda)
        self.ranks += [self._make_rank(i) for i in range(1, self.cfg.world_size)]
        # the process group's timeout bounds its rendezvous as well as its collectives: a short fit timeout
        # must not fail a start whose ranks come up a few seconds apart (the fit's own wait bounds the fit)
        pg_timeout = max(self.cfg.timeout_s, self.control_timeout_s)
        refs = [r.init_distributed.remote(addr, port, self.backend, pg_timeout) for r in self.ranks]
        wait_all(refs, self._names(), self.control_timeout_s, "learner init_distributed")
        log.info("learner group up: %d ranks, %s, master %s:%d", len(self.ranks), self.backend, addr, port)

    def _make_rank(self, rank: int):
        where = self.shared.strategy(rank) if self.shared is not None else \
            PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=rank)
        return LearnerRankActor.options(
            num_cpus=self.cfg.num_cpus_per_rank, num_gpus=self._gpus, scheduling_strategy=where,
        ).remote(rank, self.cfg.world_size, self.cfg.threads)

    def _names(self) -> list[str]:
        return [f"learner rank {i}" for i in range(len(self.ranks))]

    def _check_usable(self) -> None:
        if not self.ranks:
            raise RuntimeError("learner group is shut down")
        if self.broken:
            raise RuntimeError(f"learner group is broken ({self.broken}); shut it down and build a new one")

    # ------------------------------------------------------------ fine-tuning

    def async_fit(
        self, model_dir: str, examples: Sequence[SFTExample], out_dir: str, seed: int, name: str
    ) -> list[ray.ObjectRef]:
        """Start ``fit`` on every rank (the examples go into the object store once)."""
        self._check_usable()
        local = Path(model_dir)
        if (local.is_absolute() or local.exists()) and not (local / "config.json").is_file():
            # a hub id (GPU clusters) passes through: the ranks resolve it themselves
            raise ValueError(f"fit {name}: {model_dir} is not a Hugging Face model dir (no config.json)")
        if not examples:
            raise ValueError(f"fit {name}: no examples")
        bad = next((i for i, e in enumerate(examples) if not isinstance(e, SFTExample)), None)
        if bad is not None:
            raise TypeError(
                f"fit {name}: example {bad} is a {type(examples[bad]).__name__}, expected SFTExample"
            )
        shared = ray.put(list(examples))
        cfg = dataclasses.replace(self.cfg)
        return [r.fit.remote(str(model_dir), shared, str(out_dir), seed, name, cfg) for r in self.ranks]

    def fit(
        self, model_dir: str, examples: Sequence[SFTExample], out_dir: str, seed: int, name: str
    ) -> FitResult:
        """Fine-tune ``model_dir`` on ``examples`` with every rank; rank 0 saves to ``out_dir``.

        Fails with one RuntimeError when a rank dies or fails, or after ``cfg.timeout_s``.
        """
        refs = self.async_fit(model_dir, examples, out_dir, seed, name)
        try:
            results = wait_all(refs, self._names(), self.cfg.timeout_s, f"learner fit {name!r}")
        except RuntimeError as e:
            self.broken = str(e)
            raise
        jit = sorted({op for r in results for op in r["jit_ops"]})
        if jit:
            log.warning("learner fit %s: DeepSpeed built ops at run time: %s", name, ", ".join(jit))
        steps = results[0]["steps"]
        losses = [sum(r["losses"][i] for r in results) / len(results) for i in range(steps)]
        seconds = max(r["seconds"] for r in results)
        tokens = sum(r["tokens"] for r in results)
        self.last_fit = {
            "name": name,
            "out_dir": str(out_dir),
            "checksum": results[0]["checksum"],
            "jit_ops": jit,
            "memory": results[0]["memory"],
        }
        return FitResult(
            model=name,
            out_dir=str(out_dir),
            losses=losses,
            steps=steps,
            examples=results[0]["examples"],
            seconds=seconds,
            tokens_per_s=tokens / max(seconds, 1e-9),
        )

    def release_memory(self) -> int | None:
        """Every rank gives its device back to the engines that share it (``LearnerRank.release_memory``);
        returns the bytes freed over all ranks, None on CPU ranks."""
        self._check_usable()
        got = wait_all([r.release_memory.remote() for r in self.ranks], self._names(), self.control_timeout_s,
                       "learner release_memory")
        freed = [g["freed_bytes"] for g in got if g["freed_bytes"] is not None]
        return sum(freed) if freed else None

    # ------------------------------------------------------------ weight broadcast

    def broadcast(self, samplers: Sequence, version: int, transport: str | None = None) -> BroadcastResult:
        """Send the last fit's weights to every sampler; each verifies the checksum before loading.

        ``transport`` (default ``cfg.transport``): "object_store" puts the state once
        and hands every sampler's ``load_weights`` the same reference; "collective"
        broadcasts ``cfg.bucket_mb`` buckets from rank 0 over a weight group with the
        samplers (a vLLM sampler's worker receives them straight into its model), built
        on first use and kept while the set of samplers stays the same: one Ray call to
        rank 0 and one per sampler per sync, whatever the model's size.
        """
        self._check_usable()
        transport = transport or self.cfg.transport
        if transport not in TRANSPORTS:
            raise ValueError(
                f"broadcast: transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}"
            )
        if self.last_fit is None:
            raise RuntimeError("broadcast: no weights yet (run fit first)")
        if not samplers:
            raise ValueError("broadcast: no samplers")
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"broadcast: version must be an int >= 0, got {version!r}")
        start = time.perf_counter()
        names = [f"sampler {i}" for i in range(len(samplers))]
        if transport == "object_store":
            info = self._rank0_call(self.ranks[0].weights_info.remote(), "weights_info")
            state_ref = self.ranks[0].state_dict.remote()
            refs = [s.load_weights.remote(state_ref, version, info["checksum"]) for s in samplers]
            got = wait_all(refs, names, self.control_timeout_s, f"broadcast v{version} (object store)")
            calls = 2 + len(refs)
        else:
            info = self._rank0_call(self.ranks[0].weights_info.remote(self.cfg.bucket_mb << 20), "weights_info")
            calls = 1 + self._join_weight_group(samplers)
            try:
                refs = [self.ranks[0].send_weights.remote(info["meta"], info["plan"])]
                refs += [s.receive_weights.remote(version, info["checksum"], info["meta"], info["plan"])
                         for s in samplers]
                got = wait_all(
                    refs,
                    ["learner rank 0", *names],
                    self.control_timeout_s,
                    f"broadcast v{version} (collective)",
                )[1:]
                calls += len(refs)
            except RuntimeError:
                self._leave_weight_group()
                raise
        wrong = [n for n, c in zip(names, got, strict=True) if c != info["checksum"]]
        if wrong:
            raise RuntimeError(f"broadcast v{version}: {', '.join(wrong)} acknowledged a different checksum")
        return BroadcastResult(
            version, info["checksum"], transport, time.perf_counter() - start, info["bytes"], calls
        )

    def _rank0_call(self, ref: ray.ObjectRef, what: str):
        return wait_all([ref], ["learner rank 0"], self.control_timeout_s, f"learner {what}")[0]

    def _join_weight_group(self, samplers: Sequence) -> int:
        """Build the weight group with ``samplers`` unless it is already theirs; returns the Ray calls made."""
        key = tuple(s._actor_id.hex() for s in samplers)
        if key == self._weight_key:
            return 0
        self._leave_weight_group()
        addr, port = self._rank0_call(self.ranks[0].weight_group_address.remote(), "weight_group_address")
        world = len(samplers) + 1
        names = ["learner rank 0", *(f"sampler {i}" for i in range(len(samplers)))]
        calls = 1
        backend = "gloo"
        if self.backend == "nccl":  # GPU buffers, unless two members share a GPU
            refs = [self.ranks[0].device_key.remote(), *(s.device_key.remote() for s in samplers)]
            backend = group_backend(self.backend, wait_all(refs, names, self.control_timeout_s, "device query"))
            calls += len(refs)
        refs = [self.ranks[0].join_weight_group.remote(addr, port, world, self.control_timeout_s, backend)]
        refs += [s.join_weight_group.remote(addr, port, i + 1, world, backend) for i, s in enumerate(samplers)]
        wait_all(refs, names, self.control_timeout_s, "weight group join")
        self._weight_key, self.weight_backend = key, backend
        return calls + len(refs)

    def _leave_weight_group(self) -> None:
        self._weight_key = None
        if self.ranks:
            try:
                ray.get(self.ranks[0].leave_weight_group.remote(), timeout=10)
            except (RayActorError, RayTaskError, GetTimeoutError) as e:
                log.warning("learner: leaving the weight group failed: %s", cause_line(e))

    # ------------------------------------------------------------ teardown

    def shutdown(self) -> None:
        """Kill every rank and free the placement group; safe to call twice or on a broken group."""
        for r in self.ranks:
            ray.kill(r, no_restart=True)
        self.ranks = []
        self._weight_key = None
        if getattr(self, "_pg", None) is not None:  # a shared placement group belongs to the run
            remove_placement_group(self._pg)
            self._pg = None

    def __enter__(self) -> LearnerGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
