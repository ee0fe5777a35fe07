"""The DeepSpeed learner group on a real local Ray cluster: fit, checkpoint, broadcast, failure.

Two gloo ranks fine-tune a tiny random Llama; two sampler actors (a small class below
that wraps an HFEngine and implements the Sampler weight-loading methods with the
learner.broadcast helpers) receive the weights over both transports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest
import ray
import torch
from rest_fixtures import TINY, step_examples  # noqa: E402
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from actors.engines.hf import HFEngine
from agent.trajectory import Question
from core.config import AgentConfig, Config, EngineConfig, LearnerConfig
from learner.broadcast import WeightGroup, receive_buckets, verify_checksum, weights_checksum
from learner.deepspeed_rank import unique_state
from learner.group import LearnerGroup
from toyworld.modelzoo import init_model, train_tokenizer

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before ray.init: token auth breaks local clusters

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROMPTS = ['question = "Who taught Ada Bela?"\naction = ', 'question = "Who taught Gus Pia?"\naction = ']


class EngineSampler:
    """A stand-in sampler: an HFEngine plus the three weight-loading methods of actors.sampler.Sampler."""

    def __init__(self, model_dir: str):
        torch.set_num_threads(1)
        self.engine = HFEngine(model_dir)
        self.group: WeightGroup | None = None

    def load_weights(self, state, version: int, checksum: str) -> str:
        verify_checksum(state, checksum)
        self.engine.load_weights(state, version)
        return checksum

    def join_weight_group(self, master_addr: str, master_port: int, rank: int, world_size: int,
                          backend: str = "gloo") -> None:
        if self.group is not None:
            self.group.close()
        self.group = WeightGroup(master_addr, master_port, rank, world_size, timeout_s=60, backend=backend)

    def receive_weights(self, version: int, checksum: str, meta: list, plan: list) -> str:
        state = {name: t.clone() for name, t in receive_buckets(self.group, meta, plan)}
        return self.load_weights(state, version, checksum)

    def greedy(self, prompts: list[str]) -> list[str]:
        return [s[0].text for s in self.engine.generate(prompts, 1, 0.0, 12, stop=["\n"])]

    def state_checksum(self) -> str:
        return weights_checksum(unique_state(self.engine.model))

    def ping(self) -> int:
        return self.engine.version


EngineSamplerActor = ray.remote(EngineSampler)


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        # workers import the repo and this module (the EngineSampler class) by name
        runtime_env={"env_vars": {"PYTHONPATH": f"{REPO}{os.pathsep}{HERE}", "RAY_AUTH_MODE": "disabled"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("learner")
    texts = [e.prompt + e.completion for e in step_examples(200, 1)]
    train_tokenizer(texts, root / "tok", vocab_size=320)
    return init_model(TINY, root / "tok", root / "base", seed=0)


def config(**kw) -> LearnerConfig:
    fields = dict(world_size=2, zero_stage=0, batch_size=8, epochs=3, lr=3e-3, warmup_steps=1)
    fields.update(num_cpus_per_rank=0.5, timeout_s=120.0, max_len=64)
    fields.update(kw)
    return LearnerConfig(**fields)


@pytest.fixture(scope="module")
def group(cluster):
    g = LearnerGroup(config())
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def fitted(group, base, tmp_path_factory):
    """The ZeRO-0 fit that the broadcast tests send: (FitResult, checkpoint dir)."""
    group.cfg = dataclasses.replace(group.cfg, zero_stage=0)
    out = tmp_path_factory.mktemp("ckpt") / "L-gen1"
    return group.fit(str(base), step_examples(20, 2), str(out), seed=0, name="L"), out


def assert_trained(result, base: Path, out: Path, checksum: str) -> None:
    first, last = result.losses[0], sum(result.losses[-3:]) / 3
    assert result.steps == len(result.losses) >= 6 and result.examples == 20
    assert last < first - 0.3, result.losses
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)  # transformers loads it
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # parameters changed
    assert weights_checksum(after) == checksum == json.loads((out / "training.json").read_text())["checksum"]
    assert torch.equal(model.get_input_embeddings().weight, after["model.embed_tokens.weight"])


def test_fit_zero0_trains_and_saves(group, fitted, base):
    result, out = fitted
    assert result.model == "L" and result.out_dir == str(out) and result.tokens_per_s > 0
    assert_trained(result, base, out, group.last_fit["checksum"])
    assert group.last_fit["jit_ops"] == []  # no DeepSpeed op was compiled at run time


@pytest.mark.parametrize("stage", [2, 3])
def test_fit_zero_stages(group, fitted, base, tmp_path, stage):
    zero0, zero0_dir = fitted
    group.cfg = dataclasses.replace(group.cfg, zero_stage=stage)
    try:
        result = group.fit(str(base), step_examples(20, 2), str(tmp_path / "out"), seed=0, name=f"z{stage}")
    finally:
        group.cfg = dataclasses.replace(group.cfg, zero_stage=0)
    assert_trained(result, base, tmp_path / "out", group.last_fit["checksum"])
    assert group.last_fit["jit_ops"] == []
    # same data, seed and math: the stages agree up to float rounding (ZeRO-3 gathered full weights)
    assert result.losses == pytest.approx(zero0.losses, abs=1e-4)
    mine, ref = load_file(tmp_path / "out" / "model.safetensors"), load_file(zero0_dir / "model.safetensors")
    assert all(torch.allclose(mine[k], ref[k], atol=1e-4) for k in ref)


@pytest.fixture(scope="module")
def samplers(cluster, base):
    actors = [EngineSamplerActor.options(num_cpus=0.25).remote(str(base)) for _ in range(2)]
    ray.get([a.ping.remote() for a in actors], timeout=120)
    yield actors
    for a in actors:
        ray.kill(a)


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_broadcast_delivers_the_checkpoint(group, base, samplers, tmp_path, transport):
    seed = {"object_store": 11, "collective": 12}[transport]  # fresh weights the samplers cannot hold yet
    group.cfg = dataclasses.replace(group.cfg, zero_stage=0)
    fit = group.fit(str(base), step_examples(20, 2), str(tmp_path / "ckpt"), seed=seed, name="L")
    checksum = group.last_fit["checksum"]
    assert checksum not in ray.get([s.state_checksum.remote() for s in samplers], timeout=60)
    want = [s[0].text for s in HFEngine(fit.out_dir).generate(PROMPTS, 1, 0.0, 12, stop=["\n"])]
    for version in (1, 2):  # the second collective broadcast reuses the weight group
        result = group.broadcast(samplers, version=version, transport=transport)
        assert result.transport == transport and result.version == version
        assert result.checksum == checksum and result.bytes > 0
        assert ray.get([s.state_checksum.remote() for s in samplers], timeout=60) == [checksum] * 2
        assert ray.get([s.ping.remote() for s in samplers], timeout=60) == [version] * 2
        # the sampler now decodes exactly like a fresh engine loaded from the saved checkpoint
        assert ray.get([s.greedy.remote(PROMPTS) for s in samplers], timeout=60) == [want] * 2


def test_real_sampler_actors_decode_like_the_checkpoint(group, base, tmp_path):
    """The actors engineer's SamplerActor over both transports, then a rollout at the new version."""
    sampler = pytest.importorskip("actors.sampler")
    cfg = Config(
        engine=EngineConfig(model=str(base)),
        agent=dataclasses.replace(AgentConfig(), k_samples=2, max_new_tokens=16),
    )
    questions = [Question("q1", "Who taught Ada Bela?"), Question("q2", "Who taught Gus Pia?")]
    actors = [sampler.SamplerActor.options(num_cpus=0.25).remote(cfg, questions, None, i) for i in range(2)]
    try:
        group.cfg = dataclasses.replace(group.cfg, zero_stage=0)
        fit = group.fit(str(base), step_examples(20, 2), str(tmp_path / "ckpt"), seed=13, name="L")
        for version, transport in ((1, "object_store"), (2, "collective")):
            result = group.broadcast(actors, version=version, transport=transport)
            assert result.checksum == group.last_fit["checksum"]
            assert ray.get([a.ping.remote() for a in actors], timeout=60) == [version] * 2
        with pytest.raises(ray.exceptions.RayTaskError, match="holds weights v2, driver expects v1"):
            ray.get(actors[0].rollout.remote(["q1"], 1, 1, 5), timeout=120)
        got = ray.get([a.rollout.remote(["q1", "q2"], 2, 1, 5) for a in actors], timeout=300)
        local = sampler.Sampler(cfg, questions, None, model=fit.out_dir)  # fresh engine on the checkpoint
        want = local.rollout(["q1", "q2"], 0, 1, 5)
    finally:
        for a in actors:
            ray.kill(a)
    assert all(
        t["policy_version"] == 2 and {s["policy_version"] for s in t["steps"]} == {2} for r in got for t in r
    )
    assert sum(len(s["samples"]) for t in want for s in t["steps"]) >= 2  # the comparison has content
    for trajs in got:  # same samples, log-probabilities and choices as the fresh engine: same weights
        assert [unversioned(t) for t in trajs] == [unversioned(t) for t in want]


def unversioned(traj: dict) -> dict:
    return dict(traj, policy_version=None, steps=[dict(s, policy_version=None) for s in traj["steps"]])


def test_dead_rank_fails_fit_fast_and_group_shuts_down(cluster, base, samplers, tmp_path):
    g = LearnerGroup(config(epochs=400, timeout_s=90.0))  # a fit of about 1,200 steps
    with pytest.raises(RuntimeError, match="run fit first"):
        g.broadcast(samplers, version=1)
    with pytest.raises(ValueError, match="transport"):
        g.broadcast(samplers, version=1, transport="carrier-pigeon")
    victim = g.ranks[1]
    killer = threading.Timer(4.0, lambda: ray.kill(victim, no_restart=True))
    killer.start()
    try:
        with pytest.raises(RuntimeError, match=r"learner fit 'L' failed: learner rank 1 died") as err:
            g.fit(str(base), step_examples(20, 2), str(tmp_path / "never"), seed=0, name="L")
        assert "\n" not in str(err.value)  # one line; "died", not "did not finish": no wait for the timeout
        with pytest.raises(RuntimeError, match="broken"):
            g.fit(str(base), step_examples(20, 2), str(tmp_path / "never"), seed=0, name="L")
    finally:
        killer.cancel()
        g.shutdown()
    assert g.ranks == []
    g.shutdown()  # idempotent
    assert not (tmp_path / "never").exists()


def test_fit_past_its_timeout_is_an_error(cluster, base, tmp_path):
    # a fit far longer than 5 s; the ranks' rendezvous is bounded by the control timeout, not by this one
    g = LearnerGroup(config(epochs=20000, timeout_s=5.0))
    try:
        with pytest.raises(
            RuntimeError, match=r"learner fit 'S' did not finish within 5 s \(still running: learner rank 0"
        ):
            g.fit(str(base), step_examples(20, 2), str(tmp_path / "never"), seed=0, name="S")
        assert g.broken and "did not finish" in g.broken
    finally:
        g.shutdown()
    assert not (tmp_path / "never").exists()
