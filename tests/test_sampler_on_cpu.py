"""The Sampler as a plain class: a tiny random model, real BM25 over a tiny toy world.

A random model's steps rarely parse, so these tests check the sampler's contract
(ids, versions, refusals, weight loading, both weight transports), not the agent's
skill; the slow tests drive a model that has learned the step grammar.
"""

from __future__ import annotations

import dataclasses
import socket
import threading

import pytest
import torch

from actors.rankers import Critic
from actors.sampler import RemoteSearch, Sampler, ranker_chooser
from actors.search.bm25 import BM25Search
from agent.trajectory import Question, Step, Trajectory
from core.config import AgentConfig, Config, EngineConfig, RankerConfig, RestConfig, SearchConfig
from core.engine import Sample
from core.errors import StaleWeights
from learner.broadcast import WeightGroup, plan_buckets, send_buckets, state_meta, weights_checksum
from rest.backends import build_engine
from toyworld.build import build_world_data, load_questions
from toyworld.graph import WorldSize


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sampler")
    build_world_data(root / "world", 0, WorldSize.tiny(), n_aux=0)
    corpus = str(root / "world" / "corpus.jsonl.gz")
    cfg = Config(
        agent=AgentConfig(k_samples=2, max_new_tokens=6, search_budget=2, prompt_style="zeroshot", temperature=1.0),
        engine=EngineConfig(model=str(root / "model"), random_init="tiny"),
        search=SearchConfig(corpus=corpus, cache_dir=str(root / "bm25")),
    )
    build_engine(cfg)  # the random tiny model and its tokenizer, made where a run prepares them
    records = load_questions(root / "world" / "questions" / "train.jsonl")[:6]
    questions = [Question(r["id"], r["question"], tuple(r["answers"])) for r in records]
    search = BM25Search(corpus, cfg.search.cache_dir)
    return cfg, questions, search


@pytest.fixture()
def sampler(setup):
    cfg, questions, search = setup
    return Sampler(cfg, questions, search, replica=1)


def texts(trajs: list[dict]) -> list[str]:
    return [s["text"] for t in trajs for step in t["steps"] for s in step["samples"]]


def perturbed(s: Sampler, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """The model's weights plus noise (the tied lm_head left out: it shares the embeddings)."""
    g = torch.Generator().manual_seed(0)
    own = s.engine.model.state_dict()
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in own.items() if k != "lm_head.weight"}


def test_rollout_returns_tagged_trajectories(sampler, setup):
    _, questions, _ = setup
    ids = [q.id for q in questions[:3]]
    trajs = sampler.rollout(ids, expected_version=0, trajectories_per_question=2, seed=5)
    assert [t["id"] for t in trajs] == [f"{i}#{j}" for i in ids for j in range(2)]
    assert all(t["policy_version"] == 0 and t["question_id"] in ids for t in trajs)
    assert all(step["policy_version"] == 0 for t in trajs for step in t["steps"])
    assert all(t["end_reason"] != "running" for t in trajs)
    assert all(len(step["samples"]) == 2 for t in trajs for step in t["steps"] if step["kind"] == "decision")
    Trajectory.from_dict(trajs[0])  # the dicts round-trip
    assert texts(sampler.rollout(ids, 0, 2, seed=5)) == texts(trajs)  # the seed fixes the samples
    stats = sampler.stats()
    assert stats["version"] == 0 and stats["replica"] == 1 and stats["rollouts"] == 2 and stats["waves"] > 0
    assert sampler.ping() == 0


def test_stale_version_and_unknown_ids_are_refused_before_any_work(sampler, setup):
    _, questions, _ = setup
    with pytest.raises(StaleWeights, match="sampler 1 holds weights v0, driver expects v3"):
        sampler.rollout([questions[0].id], expected_version=3, trajectories_per_question=1, seed=0)
    with pytest.raises(KeyError, match="nope"):
        sampler.rollout([questions[0].id, "nope"], expected_version=0, trajectories_per_question=1, seed=0)
    assert sampler.stats()["waves"] == 0 and sampler.stats()["rollouts"] == 0


def test_load_weights_checks_the_checksum_then_changes_outputs(sampler, setup):
    _, questions, _ = setup
    ids = [q.id for q in questions[:2]]
    before = texts(sampler.rollout(ids, 0, 1, seed=3))
    state = perturbed(sampler)
    good = weights_checksum(state)
    with pytest.raises(ValueError, match="checksum mismatch"):
        sampler.load_weights(state, 1, "0" * 64)
    assert sampler.version == 0 and texts(sampler.rollout(ids, 0, 1, seed=3)) == before
    assert sampler.load_weights(state, 1, good) == good
    assert sampler.version == 1 and sampler.engine.version == 1
    after = sampler.rollout(ids, 1, 1, seed=3)
    assert texts(after) != before
    assert all(t["policy_version"] == 1 for t in after)
    with pytest.raises(StaleWeights, match="holds weights v1, driver expects v0"):
        sampler.rollout(ids, 0, 1, seed=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_collective_weights_are_received_verified_and_loaded(sampler):
    state = perturbed(sampler, 0.1)
    meta = state_meta(state)
    plan = plan_buckets(meta, 4096)  # several buckets
    assert len(plan) > 1
    port = _free_port()
    errors: list[BaseException] = []

    def learner_rank0():
        try:
            group = WeightGroup("127.0.0.1", port, 0, 2, timeout_s=60)
            send_buckets(group, state, meta, plan)
            send_buckets(group, state, meta, plan)
            group.close()
        except BaseException as e:  # surfaced by the assert below
            errors.append(e)

    sender = threading.Thread(target=learner_rank0, daemon=True)
    sender.start()
    with pytest.raises(ValueError, match="rank must be >= 1"):
        sampler.join_weight_group("127.0.0.1", port, 0, 2)
    sampler.join_weight_group("127.0.0.1", port, 1, 2)
    with pytest.raises(ValueError, match="checksum mismatch"):
        sampler.receive_weights(2, "f" * 64, meta, plan)
    assert sampler.version == 0
    assert sampler.receive_weights(2, weights_checksum(state), meta, plan) == weights_checksum(state)
    sender.join(timeout=60)
    sampler.leave_weight_group()
    assert not errors and sampler.version == 2
    own = sampler.engine.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_use_model_swaps_the_checkpoint_in_place_and_a_failed_one_refuses_work(setup, tmp_path):
    cfg, questions, search = setup
    ids = [q.id for q in questions[:2]]
    s = Sampler(cfg, questions, search)
    base = texts(s.rollout(ids, 0, 1, seed=3))
    other = tmp_path / "other"
    s.engine.model.load_state_dict(perturbed(s), strict=False)
    s.engine.model.save_pretrained(other)
    s.engine.tokenizer.save_pretrained(other)
    same = perturbed(s, 0.0)
    s.load_weights(same, 2, weights_checksum(same))  # some version > 0, which the swap resets
    assert s.use_model(str(other)) == 0 and s.version == 0
    fresh = texts(Sampler(cfg, questions, search, model=str(other)).rollout(ids, 0, 1, seed=3))
    assert texts(s.rollout(ids, 0, 1, seed=3)) == fresh != base
    s.use_model(cfg.engine.model)  # and back: the outputs of the first checkpoint again
    assert texts(s.rollout(ids, 0, 1, seed=3)) == base
    with pytest.raises(Exception, match="missing"):
        s.use_model(str(tmp_path / "missing"))
    with pytest.raises(StaleWeights, match="holds weights v-1"):  # its pool replaces it
        s.rollout(ids, 0, 1, seed=3)


def test_receive_before_join_is_a_clear_error(sampler):
    with pytest.raises(RuntimeError, match="before join_weight_group"):
        sampler.receive_weights(1, "x", [], [])


def test_continue_with_ranker_refuses_the_oracle_and_builds_a_chooser(setup):
    cfg, questions, search = setup
    oracle = dataclasses.replace(cfg, rest=RestConfig(continue_with="ranker"), ranker=RankerConfig(kind="oracle"))
    with pytest.raises(ValueError, match="oracle"):
        Sampler(oracle, questions, search)
    critic = dataclasses.replace(oracle, ranker=RankerConfig(kind="critic"))
    s = Sampler(critic, questions, search)
    trajs = s.rollout([questions[0].id], 0, 1, seed=0)
    first = trajs[0]["steps"][0]
    assert first["scores"] is not None and len(first["scores"]) == 2  # the chooser scored the step


def test_ranker_chooser_picks_the_critics_best_parseable_sample():
    q = "Where was the person who wrote The Sleeping Moon born?"
    traj = Trajectory("q#0", "q", q)
    samples = [Sample(' Search("Lucy Gray born")', 5, -1.0), Sample(' Search("The Sleeping Moon author")', 5, -4.0),
               Sample(" Search(", 2, -0.1)]
    step = Step("decision", prompt="p", samples=samples, parse_ok=[True, True, False])
    traj.steps.append(step)
    choose = ranker_chooser(Critic(), traj)
    # the lowest-perplexity rule would take sample 0 (a query about an unseen entity)
    assert choose(step, [object(), object(), None]) == 1
    assert step.ranker_best == 1 and len(step.scores) == 3
    assert choose(step, [None, None, None]) is None
    with pytest.raises(RuntimeError, match="last step"):
        choose(Step("decision", prompt="p", samples=samples), [object(), object(), None])


def test_remote_search_rejects_a_bad_timeout():
    with pytest.raises(ValueError, match="timeout_s"):
        RemoteSearch(actor=None, timeout_s=0)
