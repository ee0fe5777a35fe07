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
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

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


def make_tasks(question_ids: Sequence[str], per_task: int, seed_of: Callable[[int], int]) -> list[Task]:
    """Split ``question_ids`` into consecutive tasks of ``per_task``; task i samples with ``seed_of(i)``."""
    ids = list(question_ids)
    return [Task(i, ids[s : s + per_task], seed_of(i)) for i, s in enumerate(range(0, len(ids), per_task))]


def _is_stale(e: BaseException) -> bool:
    from actors.sampler import StaleWeights

    return isinstance(e, StaleWeights) or "StaleWeights" in type(e).__name__


def _short(e: BaseException, limit: int = 240) -> str:
    cause = e.cause if isinstance(e, RayTaskError) and e.cause is not None else e
    text = " ".join(str(cause).split()) or type(cause).__name__
    text = text.splitlines()[0] if text else type(cause).__name__
    return f"{type(cause).__name__}: {text[:limit]}"


class SamplerPool:
    """``size`` replicas made by ``make_actor``; ``map`` runs tasks on them (see the module doc)."""

    def __init__(self, make_actor: Callable[[int], ActorHandle], size: int, call_timeout_s: float,
                 max_task_retries: int, what: str = "sampler"):
        self.make_actor = make_actor
        self.call_timeout_s = call_timeout_s
        self.max_task_retries = max_task_retries
        self.what = what
        self.actors: list[ActorHandle] = [self._start(slot) for slot in range(size)]
        self.stats = {"tasks": 0, "failures": 0, "resubmitted": 0, "replaced": 0}
        self._busy: dict[int, int] = {}

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
        """Run every task (``rollout(ids, version, tpq, seed)``); results concatenated in task order."""
        queue = deque(tasks)
        pending: dict[ray.ObjectRef, tuple[int, Task, float]] = {}
        results: dict[int, list[dict]] = {}
        while queue or pending:
            for slot in range(len(self.actors)):
                if slot in self._busy or not queue:
                    continue
                task = self._next_for(queue, slot)
                ref = self.actors[slot].rollout.remote(task.question_ids, version, trajectories_per_question,
                                                       task.seed)
                pending[ref] = (slot, task, time.monotonic() + self.call_timeout_s)
                self._busy[slot] = task.index
            wait_s = max(0.0, min(d for _, _, d in pending.values()) - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
            for ref in ready:
                slot, task, _ = pending.pop(ref)
                del self._busy[slot]
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
                    del self._busy[slot]
                    self._failed(queue, task, slot, f"no answer within {self.call_timeout_s:.0f} s", replace=True)
        return [t for task in sorted(tasks, key=lambda t: t.index) for t in results[task.index]]

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
        try:
            ray.kill(self.actors[slot], no_restart=True)
        except (RayError, ValueError):
            pass
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
            try:
                ray.kill(actor, no_restart=True)
            except (RayError, ValueError):
                pass
        self.actors = []
