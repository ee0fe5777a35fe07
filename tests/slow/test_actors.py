"""Sampler, search and ranker actors on a real local Ray cluster over a tiny toy world.

The policy is a tiny Llama trained here for a few seconds on the demonstrator's
trajectories of the world's training questions, so that its steps mostly parse and
episodes really search (a random model never gets past its first decision). Nothing
is mocked: real Ray actors, real BM25, real engines.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import ray
import torch

from actors.rankers.actor import RankerActor
from actors.sampler import RemoteSearch, SamplerActor
from actors.search.actor import SearchActor
from actors.search.bm25 import BM25Search
from agent.trajectory import LLM_STEP_KINDS, Question, Trajectory
from core.config import AgentConfig, Config, EngineConfig, RankerConfig, SearchConfig
from core.errors import StaleWeights
from core.search import SearchError
from learner.broadcast import weights_checksum
from learner.selection import apply_scores
from learner.trainer import TrainConfig, train
from rest.backends import build_engine
from rest.cluster import _read_token, check_shared_storage
from toyworld.build import build_world_data, load_questions
from toyworld.demos import WorldFacts, demonstrate
from toyworld.graph import WorldSize, make_world
from toyworld.render import render_world

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300
N_QUESTIONS = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(config with a trained policy, questions, gold records by id)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("actors")
    build_world_data(root / "world", 0, WorldSize.tiny(), n_aux=0)
    agent = AgentConfig(k_samples=2, max_new_tokens=32, search_budget=3, prompt_style="zeroshot", temperature=0.7)
    search_cfg = SearchConfig(corpus=str(root / "world" / "corpus.jsonl.gz"), cache_dir=str(root / "bm25"))
    cfg = Config(agent=agent, engine=EngineConfig(model=str(root / "random"), random_init="tiny"), search=search_cfg)
    build_engine(cfg)  # the random tiny model and its tokenizer
    records = load_questions(root / "world" / "questions" / "train.jsonl")
    w = make_world(0, WorldSize.tiny())
    demos = demonstrate(records, WorldFacts(w, render_world(w)), BM25Search(search_cfg.corpus, search_cfg.cache_dir),
                        agent, noise=0.15)
    steps = TrainConfig(max_steps=300, lr=1e-2, batch_size=16, warmup_steps=10, max_len=384)
    train(str(root / "random"), None, demos.examples(), steps, out_dir=root / "policy", progress=False)
    cfg = dataclasses.replace(cfg, engine=EngineConfig(model=str(root / "policy")))
    questions = [Question(r["id"], r["question"], tuple(r["answers"])) for r in records[:N_QUESTIONS]]
    return cfg, questions, {r["id"]: r for r in records}


@pytest.fixture(scope="module")
def cluster():
    env = {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def start_sampler(cfg: Config, questions, search_actor, timeout_s: float = 60.0):
    sampler = SamplerActor.options(num_cpus=0.5).remote(cfg, questions, RemoteSearch(search_actor, timeout_s))
    assert ray.get(sampler.ping.remote(), timeout=TIMEOUT) == 0
    return sampler


@pytest.fixture(scope="module")
def rollout(cluster, world):
    cfg, questions, _ = world
    search = SearchActor.options(num_cpus=0.25).remote(cfg.search)
    sampler = start_sampler(cfg, questions, search)
    ids = [q.id for q in questions]
    trajs = ray.get(sampler.rollout.remote(ids, 0, 2, 1), timeout=TIMEOUT)
    return trajs, ids, search, sampler


def test_sampler_rolls_out_through_the_search_actor(rollout):
    trajs, ids, search, sampler = rollout
    assert [t["id"] for t in trajs] == [f"{i}#{j}" for i in ids for j in range(2)]
    assert all(t["policy_version"] == 0 and t["end_reason"] != "running" for t in trajs)
    searched = [s for t in trajs for s in t["steps"] if s["kind"] == "search"]
    assert searched and all(len(s["snippets"]) == 3 for s in searched)  # passages came through RemoteSearch
    assert ray.get(search.stats.remote(), timeout=60)["queries"] >= len(searched)
    stats = ray.get(sampler.stats.remote(), timeout=60)
    assert stats["search_calls"] >= 1 and stats["episodes_by_end_reason"]
    print("end reasons:", stats["episodes_by_end_reason"])


def test_a_stale_sampler_refuses_then_accepts_verified_weights(cluster, world, rollout):
    cfg, questions, _ = world
    _, ids, search, _ = rollout
    sampler = start_sampler(cfg, questions, search)
    with pytest.raises(StaleWeights) as info:
        ray.get(sampler.rollout.remote(ids[:1], 1, 1, 0), timeout=TIMEOUT)
    cause = getattr(info.value, "cause", info.value)
    assert isinstance(cause, StaleWeights) and "holds weights v0, driver expects v1" in str(cause)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cfg.engine.model)
    state = {k: v * 1.01 for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ref = ray.put(state)  # the object-store transport: one copy, any number of samplers
    with pytest.raises(ValueError, match="checksum mismatch"):
        ray.get(sampler.load_weights.remote(ref, 1, "0" * 64), timeout=TIMEOUT)
    checksum = weights_checksum(state)
    assert ray.get(sampler.load_weights.remote(ref, 1, checksum), timeout=TIMEOUT) == checksum
    trajs = ray.get(sampler.rollout.remote(ids[:2], 1, 1, 0), timeout=TIMEOUT)
    assert all(t["policy_version"] == 1 for t in trajs)
    with pytest.raises(StaleWeights):
        ray.get(sampler.rollout.remote(ids[:1], 0, 1, 0), timeout=TIMEOUT)
    ray.kill(sampler)


def test_ranker_actors_rank_every_llm_step(cluster, world, rollout):
    _, _, gold = world
    trajs = rollout[0]
    critic = RankerActor.options(num_cpus=0.25).remote(RankerConfig(kind="critic"))
    oracle = RankerActor.options(num_cpus=0.25).remote(RankerConfig(kind="oracle"), gold)
    by_critic, by_oracle = ray.get([critic.rank.remote(trajs), oracle.rank.remote(trajs)], timeout=TIMEOUT)
    n_llm = differ = agree = 0
    for d in trajs:
        traj = Trajectory.from_dict(d)
        for i, step in enumerate(traj.steps):
            key = (traj.id, i)
            if step.kind not in LLM_STEP_KINDS:
                assert key not in by_critic and key not in by_oracle  # only LLM steps are scored
                continue
            n_llm += 1
            picks = []
            for scores in (by_critic[key], by_oracle[key]):
                s = Trajectory.from_dict(d).steps[i]
                apply_scores(s, scores)  # what the rank phase records
                assert len(s.scores) == len(s.samples)
                ok = [j for j, p in enumerate(s.parse_ok) if p]
                assert s.ranker_best in ok if ok else s.ranker_best is None
                picks.append(s.ranker_best)
            if len({x.text for x in step.samples}) > 1:
                differ += 1
                agree += picks[0] == picks[1]
    assert n_llm > 0
    assert ray.get(critic.stats.remote(), timeout=60)["steps"] == n_llm
    print(f"critic agrees with the oracle on {agree}/{differ} steps whose samples differ ({n_llm} LLM steps)")


@ray.remote(num_cpus=0)
class _HungSearch:
    """A search actor that stops answering (a wedged server): it holds each call for a minute."""

    def search(self, queries, topk, hide_held_out=False):
        time.sleep(60)


def test_remote_search_times_out_instead_of_hanging(cluster):
    # a real actor that does not answer, rather than a 1 us timeout against a fast one:
    # under load a small search can come back first, and that test then failed at random
    hung = _HungSearch.remote()
    start = time.monotonic()
    with pytest.raises(SearchError, match="did not answer within"):
        RemoteSearch(hung, timeout_s=1.0).search(["anything"], 3)
    assert time.monotonic() - start < 30
    ray.kill(hung)


def test_a_search_actor_killed_mid_rollout_fails_episodes_not_the_sampler(cluster, world):
    cfg, questions, _ = world
    search = SearchActor.options(num_cpus=0.25).remote(cfg.search)
    assert ray.get(search.ping.remote(), timeout=TIMEOUT)
    sampler = start_sampler(cfg, questions, search, timeout_s=10.0)
    ref = sampler.rollout.remote([q.id for q in questions], 0, 1, 0)
    ray.kill(search)
    trajs = ray.get(ref, timeout=TIMEOUT)
    reasons = [t["end_reason"] for t in trajs]
    assert len(trajs) == len(questions) and "running" not in reasons
    assert any(r.startswith("search_failed") for r in reasons), reasons
    assert ray.get(sampler.ping.remote(), timeout=60) == 0  # the sampler itself lives on
    ray.kill(sampler)


def test_every_node_reads_the_run_storage_token_and_it_is_removed(cluster, tmp_path):
    assert check_shared_storage(tmp_path) == len([n for n in ray.nodes() if n["Alive"]]) >= 1
    assert list(tmp_path.iterdir()) == []  # the token is gone
    host, problem = ray.get(_read_token.remote(str(tmp_path / "missing"), "t"), timeout=60)
    assert host and problem.startswith("cannot read it")  # what a node without the mount reports
