"""The tiny model family and the transformers engine, on CPU with real (random) models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engines import make_engine
from actors.engines.hf import HFEngine
from core.config import EngineConfig
from core.engine import Engine
from core.errors import EngineError
from toyworld.modelzoo import (
    MODEL_SIZES,
    body_params,
    count_params,
    ensure_random_model,
    init_model,
    train_tokenizer,
)

torch.set_num_threads(1)

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hotpotqa_train_sample.jsonl"
PROMPTS = ["Who founded the company", "Q: Which city is the capital of the country where\nA:", "x", ""]


def corpus_lines(n: int = 600) -> list[str]:
    with CORPUS.open() as f:
        return [line for _, line in zip(range(n), f, strict=False)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus_lines(), d, vocab_size=1024)
    return d


@pytest.fixture(scope="module")
def model_dir(tok_dir, tmp_path_factory) -> Path:
    """A tiny Llama with a wide init, so its greedy output depends on the whole context."""
    return init_model(
        dict(MODEL_SIZES["tiny"], initializer_range=0.3), tok_dir, tmp_path_factory.mktemp("m"), seed=1
    )


@pytest.fixture(scope="module")
def engine(model_dir) -> HFEngine:
    return HFEngine(model_dir, max_batch=64, threads=1)


def plain_greedy(engine: HFEngine, prompt: str, max_new_tokens: int) -> tuple[list[int], float]:
    """Reference: transformers' own greedy decode, and the summed log-probs of its tokens."""
    tok = engine.tokenizer
    ids = torch.tensor(
        [[tok.bos_token_id, *tok.encode(prompt, add_special_tokens=False)]]
    )  # the learner's layout
    out = engine.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=engine.tokenizer.eos_token_id,
        pad_token_id=engine.pad_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    new = out.sequences[0, ids.shape[1] :].tolist()
    lps = [torch.log_softmax(lg[0].float(), -1)[t].item() for lg, t in zip(out.logits, new, strict=False)]
    return new, sum(lps)


# ---------------------------------------------------------------- modelzoo


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=80))
def test_tokenizer_round_trips_any_text(tok_dir, text):
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_keeps_awkward_text_and_merges_frequent_words(tok_dir):
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    for text in [
        'a "quoted" \\path\\ \n\n  indented\ttab',
        "naïve café 日本語 🙂",
        "  leading and trailing  ",
        "<|eos|>",
    ]:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(" the")) == 1
    assert tok.encode("hello") == tok("hello")["input_ids"]  # no special tokens added on the quiet
    assert {tok.bos_token, tok.eos_token, tok.pad_token} == {"<|bos|>", "<|eos|>", "<|pad|>"}


def test_train_tokenizer_rejects_tiny_vocab(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], tmp_path, vocab_size=100)


def test_random_llama_is_a_complete_deterministic_hf_dir(tok_dir, tmp_path):
    a = init_model("tiny", tok_dir, tmp_path / "a", seed=0)
    b = init_model("tiny", tok_dir, tmp_path / "b", seed=0)
    c = init_model("tiny", tok_dir, tmp_path / "c", seed=1)
    assert not list(a.glob("*.bin")) and list(a.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(a), use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(str(a))
    assert model.config.vocab_size == len(tok) == 1024
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert count_params(a) == sum(p.numel() for p in model.parameters())
    sa, sb, sc = (AutoModelForCausalLM.from_pretrained(str(d)).state_dict() for d in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    with pytest.raises(ValueError, match="unknown model size"):
        init_model("XXL", tok_dir, tmp_path / "d")


@pytest.mark.parametrize("size", ["XS", "L", {**MODEL_SIZES["L"], "num_key_value_heads": 2}])
def test_body_params_is_the_weights_outside_embeddings_and_norms(tok_dir, tmp_path, size):
    model = AutoModelForCausalLM.from_pretrained(str(init_model(size, tok_dir, tmp_path / "m")))
    body = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    assert body_params(size) == body > 0


def test_ensure_random_model_builds_once(tmp_path):
    target = tmp_path / "models" / "smoke"
    out = ensure_random_model(target, "tiny", corpus_lines(300), seed=0)
    assert out == target and (target / "config.json").is_file()
    stamp = (target / "config.json").stat().st_mtime_ns
    assert ensure_random_model(target, "tiny", iter(()), seed=5) == target  # texts never read
    assert (target / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in target.parent.iterdir()] == ["smoke"]  # no temp dir left behind


# ---------------------------------------------------------------- HFEngine


def test_engine_returns_n_finite_samples_per_prompt(engine):
    out = engine.generate(PROMPTS, n=3, temperature=1.0, max_new_tokens=12, seed=0)
    assert isinstance(engine, Engine)
    assert len(out) == len(PROMPTS) and all(len(s) == 3 for s in out)
    for s in (s for row in out for s in row):
        assert isinstance(s.text, str) and 1 <= s.n_tokens <= 12
        assert math.isfinite(s.sum_logprob) and s.sum_logprob <= 0


def test_same_seed_same_samples_other_seed_other_samples(engine):
    def run(seed):
        return engine.generate(PROMPTS[:2], n=4, temperature=1.0, max_new_tokens=10, seed=seed)

    assert run(7) == run(7)
    assert [s.text for row in run(7) for s in row] != [s.text for row in run(8) for s in row]


def test_greedy_equals_transformers_greedy(engine):
    ids, ref_lp = plain_greedy(engine, PROMPTS[1], 16)
    (sample,) = engine.generate([PROMPTS[1]], n=1, temperature=0.0, max_new_tokens=16)[0]
    assert sample.n_tokens == len(ids)
    assert sample.text == engine.tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
    assert sample.sum_logprob == pytest.approx(ref_lp, abs=1e-3)
    raw = engine.raw_generate([PROMPTS[1]], n=1, temperature=0.0, max_new_tokens=16)
    assert raw == [[ids]]


def _first_ascii_after(text: str, start: int) -> int:
    return next(i for i in range(start, len(text)) if text[i].isascii() and text[i].isprintable())


@pytest.mark.parametrize("stop_len", [1, 2])
def test_stop_string_ends_the_sample_at_the_token_that_completes_it(engine, stop_len):
    ids, _ = plain_greedy(engine, PROMPTS[0], 30)
    full = engine.tokenizer.decode(ids)
    i = _first_ascii_after(full, 4)
    stop = full[i : i + stop_len]
    k = next(k for k in range(1, len(ids) + 1) if stop in engine.tokenizer.decode(ids[:k]))
    (sample,) = engine.generate(
        [PROMPTS[0]], n=1, temperature=0.0, max_new_tokens=30, stop=[stop, "never-seen"]
    )[0]
    assert sample.n_tokens == k
    assert sample.text == full[: full.index(stop)].rstrip("\ufffd")
    assert stop not in sample.text


def test_eos_ends_the_sample_and_counts(tok_dir, tmp_path):
    # a default-init random Llama with tied embeddings repeats the last token, so a
    # prompt ending in eos makes it emit eos at once (checked against transformers)
    eng = HFEngine(init_model("tiny", tok_dir, tmp_path / "m", seed=0))
    prompt = "hello world<|eos|>"
    ids, ref_lp = plain_greedy(eng, prompt, 8)
    assert ids[-1] == eng.tokenizer.eos_token_id and len(ids) < 8  # the case under test happens
    (sample,) = eng.generate([prompt], n=1, temperature=0.0, max_new_tokens=8)[0]
    assert sample.n_tokens == len(ids) and "<|eos|>" not in sample.text
    assert sample.sum_logprob == pytest.approx(ref_lp, abs=1e-3)


def test_left_padding_batch_equals_each_prompt_alone(engine):
    together = engine.generate(PROMPTS, n=2, temperature=0.0, max_new_tokens=12)
    for prompt, row in zip(PROMPTS, together, strict=True):
        alone = engine.generate([prompt], n=1, temperature=0.0, max_new_tokens=12)[0][0]
        for s in row:
            assert (s.text, s.n_tokens) == (alone.text, alone.n_tokens)
            assert s.sum_logprob == pytest.approx(alone.sum_logprob, abs=1e-3)
    raw = engine.raw_generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=12)
    assert [engine.tokenizer.decode(r[0], skip_special_tokens=True).rstrip("\ufffd") for r in raw] == [
        row[0].text for row in together
    ]


def test_small_max_batch_splits_work_without_changing_results(model_dir, engine):
    small = HFEngine(model_dir, max_batch=3)
    greedy = small.generate(PROMPTS[:2], n=4, temperature=0.0, max_new_tokens=8)
    ref = engine.generate(PROMPTS[:2], n=4, temperature=0.0, max_new_tokens=8)
    assert [[(s.text, s.n_tokens) for s in row] for row in greedy] == [
        [(s.text, s.n_tokens) for s in row] for row in ref
    ]
    sampled = small.generate(PROMPTS, n=5, temperature=0.7, max_new_tokens=6, seed=3, stop=["\n"])
    assert [len(row) for row in sampled] == [5] * len(PROMPTS)


def test_load_weights_changes_outputs_and_version(model_dir):
    eng = HFEngine(model_dir)
    before = eng.generate(PROMPTS[:2], n=1, temperature=0.0, max_new_tokens=10)
    own = eng.model.state_dict()
    state = {k: v.clone() for k, v in own.items() if k != "lm_head.weight"}  # tied: may be left out
    gen = torch.Generator().manual_seed(0)
    state = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    eng.load_weights(state, version=4)
    assert eng.version == 4
    after = eng.generate(PROMPTS[:2], n=1, temperature=0.0, max_new_tokens=10)
    assert after != before
    assert torch.equal(eng.model.lm_head.weight, state["model.embed_tokens.weight"])  # tie survives


def test_load_weights_rejects_mismatched_state(engine):
    good = engine.model.state_dict()
    with pytest.raises(EngineError, match="missing"):
        engine.load_weights({k: v for k, v in good.items() if "layers.0.mlp" not in k}, 1)
    with pytest.raises(EngineError, match="unexpected"):
        engine.load_weights({**good, "extra.weight": torch.zeros(1)}, 1)
    with pytest.raises(EngineError, match="shape"):
        engine.load_weights({**good, "model.norm.weight": torch.ones(3)}, 1)
    assert engine.version == 0


def test_bad_model_dir_is_an_engine_error(tmp_path, model_dir):
    with pytest.raises(EngineError, match="not found"):
        HFEngine(tmp_path / "nope")
    with pytest.raises(EngineError, match="config.json"):
        HFEngine(tmp_path)
    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(EngineError, match="safetensors"):
        HFEngine(tmp_path)


def test_bad_arguments_and_overlong_prompts(engine):
    with pytest.raises(ValueError, match="n must"):
        engine.generate(["a"], n=0, temperature=1.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(["a"], n=1, temperature=-1.0, max_new_tokens=4)
    with pytest.raises(EngineError, match="context"):
        engine.generate(["a"], n=1, temperature=0.0, max_new_tokens=engine.context)
    assert engine.generate([], n=2, temperature=1.0, max_new_tokens=4) == []


def test_make_engine_builds_the_hf_backend(model_dir):
    eng = make_engine(EngineConfig(backend="hf", model=str(model_dir), max_batch=8))
    assert isinstance(eng, HFEngine) and eng.max_batch == 8
    with pytest.raises(EngineError, match="engine.model"):
        make_engine(EngineConfig(backend="hf", model=""))


def test_build_engine_with_an_explicit_model_leaves_the_world_alone(model_dir, tmp_path):
    """A closed-book eval names its model and reads no corpus: it must not build (or check) the config's world."""
    from core.config import Config, WorldConfig
    from rest.backends import build_engine

    world = tmp_path / "not-a-world"  # building here fails at once: the directory holds something else
    world.mkdir()
    (world / "notes.txt").write_text("mine")
    cfg = Config(world=WorldConfig(dir=str(world), seed=4242),
                 engine=EngineConfig(backend="hf", model=str(model_dir), threads=1))
    engine = build_engine(cfg)
    try:
        assert engine.generate(["x"], n=1, temperature=0.0, max_new_tokens=2)[0]
    finally:
        engine.close()
    assert [p.name for p in world.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------ sleep and wake (rest.colocation)


def _greedy(engine: HFEngine) -> list[tuple[str, int, float]]:
    return [(s.text, s.n_tokens, s.sum_logprob) for row in engine.generate(PROMPTS[:2], 1, 0.0, 12) for s in row]


def _weight_bytes(engine: HFEngine) -> int:
    return sum(p.numel() * p.element_size() for p in engine.model.parameters())


def test_sleep_level_1_takes_the_weights_off_the_model_and_wake_restores_them(model_dir):
    eng = HFEngine(model_dir, threads=1)
    before, held = _greedy(eng), _weight_bytes(eng)
    assert held > 0 and not eng.asleep
    freed, seconds = eng.sleep(1)
    assert eng.asleep and freed == 0 and seconds >= 0  # on the CPU no device allocator is counted
    assert _weight_bytes(eng) == 0  # every parameter left the model
    with pytest.raises(EngineError, match="asleep"):
        eng.generate(PROMPTS[:1], 1, 0.0, 4)
    with pytest.raises(EngineError, match="asleep"):
        eng.load_weights({}, 1)
    with pytest.raises(EngineError, match="asleep"):
        eng.sleep(1)
    eng.wake()
    assert not eng.asleep and eng.version == 0 and _weight_bytes(eng) == held
    assert _greedy(eng) == before
    with pytest.raises(EngineError, match="not asleep"):
        eng.wake()


def test_sleep_level_2_discards_the_weights_until_load_weights_refills_them(model_dir):
    eng = HFEngine(model_dir, threads=1)
    before = _greedy(eng)
    state = {k: v.clone() for k, v in eng.model.state_dict().items()}
    eng.sleep(2)
    assert eng.version == -1 and _weight_bytes(eng) == 0
    # nothing of the parameters is kept anywhere: the engine holds only their shapes and dtypes
    assert all(t.is_meta for name, t in eng._host.items() if name in dict(eng.model.named_parameters()))
    eng.wake()
    assert all(torch.isnan(p).all() for p in eng.model.parameters())  # fresh storage, visibly unfilled
    eng.load_weights(state, 3)
    assert eng.version == 3 and _greedy(eng) == before


def test_sleep_refuses_an_unknown_level(model_dir):
    eng = HFEngine(model_dir, threads=1)
    with pytest.raises(EngineError, match="level must be 1"):
        eng.sleep(3)
    assert not eng.asleep
