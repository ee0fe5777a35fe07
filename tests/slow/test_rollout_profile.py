"""Rollout profiling on a real local Ray cluster: the pool's breakdown, and the driver's record of it.

Real ``SamplerActor`` replicas (the tiny world's L-warm, one torch thread each)
searching through a real ``SearchActor``: 1 and 2 replicas roll out the same tasks to
the same trajectories, and each map's profile accounts for every replica-second. Then
the driver's rollout phase writes its ``rollout_breakdown`` to metrics.jsonl and
state.json. No timing is asserted, only the accounting.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import ray

from core.config import load_config
from core.state import RunState
from rest.cluster import ACTOR_ENV
from rest.loop import ReSTLoop
from rest.runs import open_run
from rest.workers import SamplerPool, make_tasks

sys.path.insert(0, str(Path(__file__).parent))
from rest_fixtures import SMOKE, overrides  # noqa: E402

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PARTS = ("engine_s", "search_s", "rank_s", "runner_other_s", "call_overhead_s", "idle_tail_s", "idle_gaps_s")


@pytest.fixture(scope="module")
def cfg(policy):  # policy: the tiny world is built first
    from rest.runs import resolve_config

    return resolve_config(load_config(SMOKE, overrides(**{"agent.k_samples": 2})))


@pytest.fixture(scope="module")
def cluster(cfg):
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": ACTOR_ENV}, logging_level="WARNING")
    yield
    ray.shutdown()


def test_one_and_two_replicas_do_the_same_work_and_account_for_their_time(cfg, cluster):
    from actors.sampler import RemoteSearch, SamplerActor
    from actors.search.actor import SearchActor
    from agent.trajectory import Question
    from evals.datasets import read_dataset

    questions = [Question(q.id, q.question) for q in read_dataset("toy-train", cfg.world.dir).questions[:12]]
    search = SearchActor.options(num_cpus=0.1).remote(cfg.search)

    def make(slot):
        actor = SamplerActor.options(num_cpus=0.25).remote(cfg, questions, RemoteSearch(search, 120), replica=slot,
                                                            model=cfg.models.policy)
        ray.get(actor.ping.remote(), timeout=300)
        return actor

    two = SamplerPool(make, 2, call_timeout_s=300, max_task_retries=0)
    one = SamplerPool(lambda slot: two.actors[slot], 1, call_timeout_s=300, max_task_retries=0)
    try:
        tasks = make_tasks([q.id for q in questions], 3, lambda i: 100 + i)
        texts = {}
        for n, pool in ((1, one), (2, two)):
            trajectories = pool.map(tasks, 0, 1)
            texts[n] = [s["text"] for t in trajectories for step in t["steps"] for s in step["samples"]]
            b = pool.last_profile.breakdown()
            assert b["replicas"] == n and b["tasks"] == 4 and "unattributed_s" not in b
            assert sum(b[p] for p in PARTS) == pytest.approx(b["capacity_s"], rel=0.02)
            assert b["engine_s"] > 0 and b["search_s"] > 0 and b["mean_prompts_per_engine_call"] > 1
        assert texts[1] == texts[2] and texts[1]
        assert [s["torch_threads"] for s in ray.get([a.stats.remote() for a in two.actors])] == [1, 1]
    finally:
        two.shutdown()
        ray.kill(search, no_restart=True)


def test_the_rollout_phase_records_its_breakdown(cfg, cluster, tmp_path):
    sets = overrides(**{"rest.eval_datasets": []})  # generation 0 then has nothing to do
    run, rcfg = open_run(tmp_path, "profiled", load_config(SMOKE, sets), False)
    loop = ReSTLoop(rcfg, run, progress=False)
    try:
        for gen, phase in ((0, "eval"), (0, "report"), (1, "rollout")):
            loop._phase(gen, phase, getattr(loop, "evaluate" if phase == "eval" else phase))
    finally:
        loop.cluster.close()
    line = [json.loads(x) for x in run.metrics.read_text().splitlines()][-1]
    assert line["phase"] == "rollout"
    b = line["rollout_breakdown"]
    assert b["sampler_startup_s"] > 0 and b["phase_s"] >= b["sampler_startup_s"] + b["map"]["wall_s"] - 0.01
    assert b["map"]["replicas"] == 2 and set(b["map"]["shares"]) == {p.removesuffix("_s") for p in PARTS}
    assert sum(b["map"]["shares"].values()) == pytest.approx(1.0, abs=0.02)
    assert RunState.load(run.state).done["1/rollout"]["rollout_breakdown"] == b
