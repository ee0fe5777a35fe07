"""Rollout scaling: throughput with 2 sampler actors against 1, on a real local Ray cluster.

The work is the real thing: ``actors.sampler.SamplerActor`` replicas (engine + episode
runner, one torch thread each) searching through a shared ``SearchActor``, driven by
``rest.workers.SamplerPool`` over the same tasks with the same seeds, so both arms roll
out the same trajectories (checked). Both arms use the same two actors (the 1-replica
pool uses the first), started at once beforehand and warmed up, so start-up is measured
apart. Target: 2 replicas / 1 >= 1.7 generated tokens per second on 2 cores.

The pool's profile says where the replicas' time went; ``cores_used`` (the replicas'
CPU seconds over the wall time) says how much CPU they actually got: on a machine shared
with other work, 2 replicas cannot scale past the cores left to them.

    python -m benchmarks.bench_scaling [--quick]
"""

from __future__ import annotations

import hashlib
import sys
import time

from actors.sampler import RemoteSearch, SamplerActor
from actors.search.actor import SearchActor
from benchmarks.common import load_average, local_ray, median, rollout_workload, row
from rest.workers import SamplerPool, make_tasks

TARGET = ">= 1.7"


def _fingerprint(trajectories: list[dict]) -> str:
    """A digest of every sample's text: equal digests mean both arms did the same work."""
    h = hashlib.sha256()
    for t in trajectories:
        for step in t["steps"]:
            for s in step.get("samples") or []:
                h.update(s["text"].encode() + b"\0")
    return h.hexdigest()[:16]


def run(quick: bool = False) -> dict:
    """Measure 1 and 2 replicas on the same tasks (alternating, ``rounds`` times each)."""
    import ray


    # whole tasks split evenly over 2 replicas, so only the episodes' own lengths unbalance them
    n_questions, per_task, tpq, rounds = (128, 16, 1, 1) if quick else (160, 16, 2, 2)
    work = rollout_workload(n_questions)
    cfg, questions = work.cfg, work.questions
    result: dict = {"workload": work.name, "questions": len(questions), "trajectories_per_question": tpq,
                    "questions_per_task": per_task, "k_samples": cfg.agent.k_samples,
                    "max_episodes_in_flight": cfg.agent.max_episodes_in_flight, "rounds": rounds,
                    "load_before": load_average()}
    with local_ray():
        search = SearchActor.options(num_cpus=0.1).remote(cfg.search)

        def make(slot: int):
            actor = SamplerActor.options(num_cpus=0.5).remote(
                cfg, questions, RemoteSearch(search, 120.0), replica=slot, model=cfg.models.policy)
            ray.get(actor.ping.remote(), timeout=300)
            return actor

        t0 = time.perf_counter()
        two = SamplerPool(make, 2, call_timeout_s=600, max_task_retries=0)
        result["start_2_replicas_s"] = round(time.perf_counter() - t0, 2)
        one = SamplerPool(lambda slot: two.actors[slot], 1, call_timeout_s=600, max_task_retries=0)
        try:
            result["torch_threads"] = [s["torch_threads"] for s in ray.get([a.stats.remote() for a in two.actors], timeout=300)]
            ids = [q.id for q in questions]
            two.map(make_tasks(ids[:4], 1, lambda i: i), 0, 1)  # warm-up: the first forward passes, the index
            tasks = make_tasks(ids, per_task, lambda i: 1000 + i)
            arms: dict[int, list[dict]] = {1: [], 2: []}
            for _ in range(rounds):
                for n, pool in ((1, one), (2, two)):
                    trajectories = pool.map(tasks, 0, tpq)
                    p = pool.last_profile
                    arms[n].append({"wall_s": p.wall_s, "tokens": p.sampler["generated_tokens"],
                                    "episodes": len(trajectories), "fingerprint": _fingerprint(trajectories),
                                    "cores_used": p.sampler["rollout_cpu_seconds"] / p.wall_s,
                                    "profile": p.breakdown()})
        finally:
            two.shutdown()
            ray.kill(search, no_restart=True)
    for n, runs in arms.items():
        result[f"replicas_{n}"] = {
            "tok_s": median([r["tokens"] / r["wall_s"] for r in runs]),
            "episodes_s": median([r["episodes"] / r["wall_s"] for r in runs]),
            "wall_s": [round(r["wall_s"], 3) for r in runs],
            "cores_used": round(median([r["cores_used"] for r in runs]), 3),
            "profile": runs[-1]["profile"],
        }
    prints = {r["fingerprint"] for runs in arms.values() for r in runs}
    result["same_work"] = len(prints) == 1
    if not result["same_work"]:
        raise RuntimeError(f"scaling: the arms rolled out different trajectories ({sorted(prints)})")
    one_s, two_s = result["replicas_1"]["tok_s"], result["replicas_2"]["tok_s"]
    result["ratio"] = two_s / one_s
    result["load_after"] = load_average()
    result["summary"] = [row(f"scaling: rollout tok/s, 2 sampler actors vs 1 ({work.name})", two_s, one_s,
                             "tok/s", TARGET)]
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=1))
