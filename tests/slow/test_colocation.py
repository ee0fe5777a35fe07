"""The colocated mode (``rest.colocate``) on a real local Ray cluster that declares 2 logical GPUs on this
CPU machine: 4 rollout samplers (transformers engine) and 2 DeepSpeed learner ranks (gloo) in the run's
shared placement group, driven through ``RunCluster`` in the order the ReST driver's phases use.

Ray hands out logical GPU ids as it would real ones, so the placement is checked by the GPU each actor
was given; torch sees no CUDA, so nothing may reach for NCCL or a device (the learner's backend is gloo).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray

from actors.sampler import Sampler
from actors.search.bm25 import BM25Search
from agent.trajectory import Question
from core.config import AgentConfig, Config, EngineConfig, LearnerConfig, RestConfig, SearchConfig
from core.run_dir import RunDir
from rest.cluster import ACTOR_ENV, RunCluster
from rest.colocation import gpu_share
from rest.loop import ReSTLoop
from rest.workers import make_tasks
from toyworld.build import build_world_data, load_questions
from toyworld.graph import WorldSize
from toyworld.modelzoo import init_model, train_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from rest_fixtures import TINY, step_examples  # noqa: E402

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # token auth breaks local clusters (ENVIRONMENT.md)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny world's corpus and questions, a tiny Llama, and a colocated config: 4 samplers on 2 GPUs."""
    root = tmp_path_factory.mktemp("coloc")
    build_world_data(root / "world", 0, WorldSize.tiny(), n_aux=0)
    train_tokenizer([e.prompt + e.completion for e in step_examples(200, 1)], root / "tok", vocab_size=320)
    base = init_model(TINY, root / "tok", root / "base", seed=0)
    records = load_questions(root / "world" / "questions" / "train.jsonl")[:4]
    questions = [Question(r["id"], r["question"]) for r in records]
    cfg = Config(
        agent=AgentConfig(k_samples=1, temperature=0.0, max_new_tokens=6, search_budget=1, prompt_style="zeroshot"),
        engine=EngineConfig(model=str(base)),
        search=SearchConfig(corpus=str(root / "world" / "corpus.jsonl.gz"), cache_dir=str(root / "bm25")),
        learner=LearnerConfig(world_size=2, num_gpus_per_rank=1, num_cpus_per_rank=0.25, zero_stage=0, batch_size=8,
                              epochs=3, lr=3e-3, warmup_steps=1, max_len=64, timeout_s=300),
        rest=RestConfig(num_samplers=4, sampler_num_cpus=0.25, sampler_num_gpus=0.5, num_search_actors=1,
                        search_num_cpus=0.25, questions_per_task=1, call_timeout_s=300),
    )
    assert cfg.colocated  # auto: samplers and learner ranks ask for GPUs
    return root, cfg, questions, base


@pytest.fixture(scope="module")
def cluster(setup):
    root, cfg, questions, _ = setup
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, runtime_env={"env_vars": ACTOR_ENV},
             logging_level="WARNING")
    run = RunCluster(cfg, RunDir(root / "run"), questions, hidden=lambda: [], version=lambda: 0)
    try:
        yield run
    finally:
        run.close()
        ray.shutdown()


def texts(trajectories: list[dict]) -> list[str]:
    return [s["text"] for t in trajectories for step in t["steps"] for s in step["samples"]]


def test_sampler_i_and_learner_rank_i_share_the_gpu_of_bundle_i(cluster):
    samplers, ranks = cluster.samplers.actors, cluster.learner.ranks
    rank_gpus = ray.get([r.device_key.remote() for r in ranks], timeout=60)
    sampler_gpus = ray.get([a.device_key.remote() for a in samplers], timeout=60)
    assert None not in rank_gpus and len(set(rank_gpus)) == 2  # a GPU per rank
    assert sampler_gpus == [rank_gpus[i % 2] for i in range(4)]  # sampler i beside rank i mod 2
    assert cluster.shared.share == gpu_share(2) == 0.3333  # a rank and two samplers per GPU
    # the GPUs are Ray's bookkeeping only: torch sees no CUDA, and the learner trains over gloo
    assert ray.get([r.cuda_available.remote() for r in ranks], timeout=60) == [False, False]
    assert cluster.learner.backend == "gloo"


def test_the_samplers_sleep_while_the_learner_fits_then_wake_and_take_the_sync(cluster, setup):
    """The finetune and broadcast phases' order: sleep (level 2), fit, learner frees, wake, sync."""
    root, cfg, questions, base = setup
    pool = cluster.samplers
    ids = [q.id for q in questions]
    tasks = make_tasks(ids, 1, lambda i: 100 + i)
    assert not cluster.gpus_to("samplers")["changed"]  # fresh samplers hold the GPUs already
    assert len(pool.map(tasks, 0, 1)) == 4  # the rollout phase: every sampler at work

    turn = cluster.gpus_to("learner", sleep_level=2)
    assert (turn["from"], turn["to"], turn["sampler_sleep_level"]) == ("samplers", "learner", 2)
    assert "learner" in turn["awake"] and "samplers" not in turn["awake"]
    assert [s["asleep"] for s in ray.get([a.stats.remote() for a in pool.actors], timeout=60)] == [True] * 4
    with pytest.raises(ray.exceptions.RayTaskError, match="asleep"):
        ray.get(pool.actors[0].rollout.remote(ids[:1], 0, 1, 0), timeout=60)
    out = root / "run" / "checkpoints" / "L-gen1"
    fit = cluster.learner.fit(str(base), step_examples(20, 2), str(out), seed=0, name="L")
    assert fit.steps > 0

    turn = cluster.gpus_to("samplers")
    assert (turn["from"], turn["to"]) == ("learner", "samplers") and "samplers" in turn["awake"]
    assert turn["learner_freed_bytes"] is None  # CPU ranks: no device cache to give back
    assert turn["sampler_versions"] == [-1] * 4  # level 2 discarded the weights: no policy until the sync
    with pytest.raises(ray.exceptions.RayTaskError, match="holds weights v-1"):
        ray.get(pool.actors[1].rollout.remote(ids[:1], 0, 1, 0), timeout=60)
    cluster.learner.broadcast(pool.actors, version=1)
    assert pool.ping_all() == [1] * 4
    assert [(e["from"], e["to"]) for e in cluster.turns.log] == [("samplers", "learner"), ("learner", "samplers")]

    # the synced samplers sample what a fresh engine on the saved checkpoint samples
    synced = pool.map(tasks, 1, 1)
    fresh = Sampler(dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, model=str(out))), questions,
                    BM25Search(cfg.search.corpus, cfg.search.cache_dir))
    local = [t for task in tasks for t in fresh.rollout(task.question_ids, 0, 1, task.seed)]
    assert texts(synced) == texts(local) and texts(local)


def test_a_level_1_sleep_keeps_the_policy(cluster):
    """The distil phase's turn: the samplers keep their weights in host memory and wake at the same version."""
    versions = cluster.samplers.ping_all()
    assert -1 not in versions
    cluster.gpus_to("learner", sleep_level=1)
    turn = cluster.gpus_to("samplers")
    assert turn["sampler_versions"] == versions and cluster.samplers.ping_all() == versions


def test_the_drivers_phases_hand_the_gpus_over_in_the_algorithms_order(cluster, setup):
    """``ReSTLoop``'s finetune, broadcast and distil phases on the real cluster (the growing batch stood in
    for by fixed examples): each records its hand-over, and the samplers end up at the new version."""
    root, cfg, _, base = setup
    run = RunDir(root / "run-loop")
    loop = SimpleNamespace(
        cfg=dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, policy=str(base), students={"S": str(base)})),
        run=run, cluster=cluster, _fitted_policy=None,
        _training_examples=lambda gen, improved=False: (step_examples(20, 2), 0),
        _local=lambda model: model, _fit_seed=lambda gen, what: 0,
        _fit_counters=lambda fit: {"steps": fit.steps})
    finetune = ReSTLoop.finetune(loop, 2)["colocation"]
    assert (finetune["from"], finetune["to"], finetune["sampler_sleep_level"]) == ("samplers", "learner", 2)
    broadcast = ReSTLoop.broadcast(loop, 2)
    assert broadcast["version"] == 2 and broadcast["colocation"]["sampler_versions"] == [-1] * 4
    assert (broadcast["colocation"]["from"], broadcast["colocation"]["to"]) == ("learner", "samplers")
    distil = ReSTLoop.distil(loop, 2)["colocation"]
    assert (distil["to"], distil["sampler_sleep_level"]) == ("learner", 1)
    assert (run.checkpoint("S", 2) / "config.json").is_file()
    woke = cluster.gpus_to("samplers")  # the next rollout's first step
    assert woke["sampler_versions"] == [2] * 4  # a level-1 sleep kept the policy the broadcast sent


def test_a_phase_without_a_hand_over_records_who_was_awake(cluster, setup):
    """``ReSTLoop._phase`` of a colocated run: a phase that hands nothing over (rank, store, eval) still
    records the groups that held their memory at its end."""
    _, cfg, _, _ = setup
    recorded = []
    loop = SimpleNamespace(cfg=cfg, cluster=cluster, say=lambda text: None,
                           state=SimpleNamespace(is_done=lambda gen, name: False, mark=lambda *a, **k: None),
                           metrics=SimpleNamespace(phase_done=lambda gen, name, s, counters: recorded.append(counters)))
    assert cluster.samplers and cluster.learner  # started (the rollout phase starts every group)
    cluster.gpus_to("learner", sleep_level=1)
    ReSTLoop._phase(loop, 3, "rank", lambda gen: {"llm_steps": 0})
    cluster.gpus_to("samplers")
    ReSTLoop._phase(loop, 3, "store", lambda gen: {"records": 0})
    assert [c["colocation"]["awake"] for c in recorded] == [["learner", "search"], ["samplers", "search"]]
