"""A pool of sampler actors working through a queue of question-id batches.

The unit of work is a ``Task``: a batch of question ids and its own sampling seed,
so whichever replica runs it, and however often, it yields the same trajectories.
Each replica holds at most one task at a time; every call has a deadline
(``call_timeout_s``). A task that fails is resubmitted, preferably to a replica that
has not failed it yet, up to ``max_task_retries`` times, then the whole map fails
with one line. A replica that died, timed out or holds stale weights is killed and
replaced through ``make_actor(slot)``, which must return a ready actor at the
driver's current policy version. So every question is rolled out exactly once per
trajectory index even when a sampler dies mid-rollout.

Every ``map`` leaves a ``MapProfile`` in ``pool.last_profile``: where the replicas'
time went (engine, search, ranking, the rest of the runner, Ray call overhead, idle
waiting for the slowest replica, idle between tasks), in replica-seconds that add
up to ``wall x replicas``, so the driver can record a rollout's breakdown.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from core.errors import StaleWeights, remote_cause, typed_line

log = logging.getLogger(__name__)


class PoolError(RuntimeError):
    """A task failed more often than allowed, or a replica could not be (re)started."""


@dataclass
class Task:
    index: int
    question_ids: list[str]
    seed: int
    attempts: int = 0
    failed_on: set[int] = field(default_factory=set)


#: sampler counters (``Sampler.stats``) that a profile takes the difference of across one ``map``
SAMPLER_TIMES = ("rollout_seconds", "rollout_cpu_seconds", "run_seconds", "engine_seconds", "search_seconds",
                 "rank_seconds", "other_seconds", "engine_calls", "prompts", "generated_tokens")


@dataclass
class MapProfile:
    """Where one ``SamplerPool.map`` spent its replicas' time (driver clock, replica-seconds).

    ``busy_s`` is time with a task in flight, as the driver sees it (dispatch to result);
    the rest is idle: ``idle_tail_s`` after a replica's last task while others still ran
    (waiting for the slowest), ``idle_gaps_s`` between tasks. ``sampler`` holds the
    replicas' own counters over the map (``SAMPLER_TIMES``, summed over the replicas
    that lived through it); ``covered`` is how many of ``replicas`` that is.
    """

    wall_s: float
    replicas: int
    tasks: int
    busy_s: float
    idle_tail_s: float
    idle_gaps_s: float
    driver_wait_s: float
    covered: int = 0
    sampler: dict[str, float] = field(default_factory=dict)

    def breakdown(self) -> dict[str, Any]:
        """Replica-seconds per part (they add up to ``capacity_s = wall x replicas``) and shares of it.

        engine / search / rank / runner_other come from the replicas' counters;
        call_overhead is busy time the replicas did not report as their own (Ray
        dispatch, moving arguments and trajectories, the driver's reaction time). When
        a replica was replaced mid-map its counters are lost: that share is ``unattributed``.
        """
        capacity = self.wall_s * self.replicas
        s = self.sampler
        parts: dict[str, float] = {}
        if self.covered == self.replicas and s:
            parts["engine_s"] = s["engine_seconds"]
            parts["search_s"] = s["search_seconds"]
            parts["rank_s"] = s["rank_seconds"]
            parts["runner_other_s"] = s["rollout_seconds"] - s["engine_seconds"] - s["search_seconds"] \
                - s["rank_seconds"]
            parts["call_overhead_s"] = max(0.0, self.busy_s - s["rollout_seconds"])
        else:
            parts["unattributed_s"] = self.busy_s
        parts["idle_tail_s"] = self.idle_tail_s
        parts["idle_gaps_s"] = self.idle_gaps_s
        out: dict[str, Any] = {"wall_s": round(self.wall_s, 3), "replicas": self.replicas, "tasks": self.tasks,
                               "capacity_s": round(capacity, 3), "driver_wait_s": round(self.driver_wait_s, 3)}
        out.update({k: round(v, 3) for k, v in parts.items()})
        out["shares"] = {k.removesuffix("_s"): round(v / capacity, 4) if capacity > 0 else 0.0
                         for k, v in parts.items()}
        if s.get("engine_calls"):
            out["mean_prompts_per_engine_call"] = round(s["prompts"] / s["engine_calls"], 2)
        if s.get("rollout_seconds"):
            # below 1: the replicas were runnable but got no core (a shared or oversubscribed machine)
            out["cpu_per_busy_second"] = round(s["rollout_cpu_seconds"] / s["rollout_seconds"], 3)
        return out


def make_tasks(question_ids: Sequence[str], per_task: int, seed_of: Callable[[int], int]) -> list[Task]:
    """Split ``question_ids`` into consecutive tasks of ``per_task``; task i samples with ``seed_of(i)``."""
    ids = list(question_ids)
    return [Task(i, ids[s : s + per_task], seed_of(i)) for i, s in enumerate(range(0, len(ids), per_task))]


def _is_stale(e: BaseException) -> bool:
    return isinstance(remote_cause(e), StaleWeights)


def _short(e: BaseException) -> str:
    return typed_line(remote_cause(e), 240)


class SamplerPool:
    """``size`` replicas made by ``make_actor``; ``map`` runs tasks on them (see the module doc)."""

    def __init__(self, make_actor: Callable[[int], ActorHandle], size: int, call_timeout_s: float,
                 max_task_retries: int, what: str = "sampler"):
        self.make_actor = make_actor
        self.call_timeout_s = call_timeout_s
        self.max_task_retries = max_task_retries
        self.what = what
        self.actors: list[ActorHandle] = self._start_all(size)
        self.stats = {"tasks": 0, "failures": 0, "resubmitted": 0, "replaced": 0}
        self.last_profile: MapProfile | None = None
        self._busy: dict[int, int] = {}

    def _start_all(self, size: int) -> list[ActorHandle]:
        """Start every replica at once; if any fails, kill those that started and raise its error.

        A start is mostly a worker process importing torch and loading the model: done one
        by one, it was the largest avoidable wait of a rollout phase (the driver waiting
        on each replica in turn). ``make_actor`` must therefore be safe to call from threads.
        """
        if size <= 1:
            return [self._start(slot) for slot in range(size)]
        with ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"{self.what}-start") as threads:
            futures = [threads.submit(self._start, slot) for slot in range(size)]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            for f in futures:
                if f.exception() is None:
                    _kill(f.result())
            raise errors[0]
        return [f.result() for f in futures]

    def _start(self, slot: int) -> ActorHandle:
        try:
            return self.make_actor(slot)
        except (RayError, TimeoutError) as e:
            raise PoolError(f"{self.what} {slot} could not start: {_short(e)}") from None

    def in_flight(self) -> dict[int, int]:
        """Replica slot -> index of the task it is running (a snapshot)."""
        return dict(self._busy)

    def map(self, tasks: Sequence[Task], version: int, trajectories_per_question: int,
            on_result: Callable[[Task, list[dict]], None] | None = None) -> list[dict[str, Any]]:
        """Run every task (``rollout(ids, version, tpq, seed)``); results concatenated in task order.

        Leaves the map's ``MapProfile`` in ``self.last_profile``.
        """
        queue = deque(tasks)
        pending: dict[ray.ObjectRef, tuple[int, Task, float]] = {}
        results: dict[int, list[dict]] = {}
        before = self._sampler_counters()
        start = time.monotonic()
        since: dict[int, float] = {}  # slot -> when its task went out
        busy_s, last_free = 0.0, dict.fromkeys(range(len(self.actors)), start)
        idle_gaps, waited = 0.0, 0.0

        def free(slot: int, now: float) -> None:
            nonlocal busy_s
            busy_s += now - since.pop(slot)
            last_free[slot] = now
            del self._busy[slot]

        while queue or pending:
            for slot in range(len(self.actors)):
                if slot in self._busy or not queue:
                    continue
                task = self._next_for(queue, slot)
                ref = self.actors[slot].rollout.remote(task.question_ids, version, trajectories_per_question,
                                                       task.seed)
                now = time.monotonic()
                idle_gaps += now - last_free[slot]  # a gap: this slot waited while work was queued
                pending[ref] = (slot, task, now + self.call_timeout_s)
                since[slot] = now
                self._busy[slot] = task.index
            wait_s = max(0.0, min(d for _, _, d in pending.values()) - time.monotonic())
            t_wait = time.monotonic()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
            waited += time.monotonic() - t_wait
            for ref in ready:
                slot, task, _ = pending.pop(ref)
                free(slot, time.monotonic())
                try:
                    out = ray.get(ref, timeout=self.call_timeout_s)
                except RayActorError as e:
                    self._failed(queue, task, slot, f"replica died ({_short(e)})", replace=True)
                except RayTaskError as e:
                    stale = _is_stale(e) or (e.cause is not None and _is_stale(e.cause))
                    self._failed(queue, task, slot, _short(e), replace=stale)
                except GetTimeoutError as e:
                    self._failed(queue, task, slot, _short(e), replace=True)
                else:
                    self.stats["tasks"] += 1
                    results[task.index] = out
                    if on_result is not None:
                        on_result(task, out)
            now = time.monotonic()
            for ref, (slot, task, deadline) in list(pending.items()):
                if deadline <= now:
                    pending.pop(ref)
                    free(slot, now)
                    self._failed(queue, task, slot, f"no answer within {self.call_timeout_s:.0f} s", replace=True)
        end = time.monotonic()
        after = self._sampler_counters()
        kept = [slot for slot in before if slot in after and after[slot][0] is before[slot][0]]
        self.last_profile = MapProfile(
            wall_s=end - start, replicas=len(self.actors), tasks=len(tasks), busy_s=busy_s,
            idle_tail_s=sum(end - t for t in last_free.values()), idle_gaps_s=idle_gaps, driver_wait_s=waited,
            covered=len(kept),
            sampler={k: sum(after[s][1][k] - before[s][1][k] for s in kept) for k in SAMPLER_TIMES})
        return [t for task in sorted(tasks, key=lambda t: t.index) for t in results[task.index]]

    def _sampler_counters(self) -> dict[int, tuple[ActorHandle, dict]]:
        """slot -> (actor, its ``SAMPLER_TIMES`` counters); replicas that do not answer at once are left out."""
        refs = {slot: (actor, actor.stats.remote()) for slot, actor in enumerate(self.actors)}
        out = {}
        for slot, (actor, ref) in refs.items():
            try:
                stats = ray.get(ref, timeout=min(self.call_timeout_s, 30.0))
                out[slot] = (actor, {k: float(stats.get(k, 0.0)) for k in SAMPLER_TIMES})
            except (RayError, GetTimeoutError):
                continue  # profiling only: a broken replica shows up in the next map's failures
        return out

    def _next_for(self, queue: deque[Task], slot: int) -> Task:
        """The first queued task this slot has not failed (any task if every slot failed it)."""
        for task in queue:
            if slot not in task.failed_on or len(task.failed_on) >= len(self.actors):
                queue.remove(task)
                return task
        return queue.popleft()

    def _failed(self, queue: deque[Task], task: Task, slot: int, reason: str, replace: bool) -> None:
        self.stats["failures"] += 1
        task.attempts += 1
        task.failed_on.add(slot)
        if task.attempts > self.max_task_retries:
            raise PoolError(f"{self.what} task {task.index} ({len(task.question_ids)} questions) failed "
                            f"{task.attempts} times; last on replica {slot}: {reason}")
        log.warning("%s task %d failed on replica %d (%s); resubmitting", self.what, task.index, slot, reason)
        queue.appendleft(task)
        self.stats["resubmitted"] += 1
        if replace:
            self.replace(slot)

    def replace(self, slot: int) -> None:
        """Kill replica ``slot`` (if still alive) and start a fresh one in its place."""
        _kill(self.actors[slot])
        self.actors[slot] = self._start(slot)
        self.stats["replaced"] += 1

    def ping_all(self) -> list[int]:
        """Every replica's policy version."""
        try:
            return ray.get([a.ping.remote() for a in self.actors], timeout=self.call_timeout_s)
        except (RayError, GetTimeoutError) as e:
            raise PoolError(f"{self.what} ping failed: {_short(e)}") from None

    def shutdown(self) -> None:
        for actor in self.actors:
            _kill(actor)
        self.actors = []


def _kill(actor: ActorHandle) -> None:
    """Kill ``actor`` for good; one already gone is fine (and a non-actor has nothing to kill)."""
    if not isinstance(actor, ActorHandle):
        return
    try:
        ray.kill(actor, no_restart=True)
    except (RayError, ValueError):
        pass
