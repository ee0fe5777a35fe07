"""The SFT loss and the CPU trainer, on tiny random Llamas from the toy world's model zoo."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

import learner.trainer as trainer
from core.config import ConfigError
from learner.data import IGNORE, SFTExample, collate, tokenize_all
from learner.trainer import TrainConfig, lr_factor, sft_loss, train
from toyworld.modelzoo import init_model, train_tokenizer

NAMES = "Ada Bela Cyro Dara Emil Fenna Gus Hale Ivo Juna Kato Lise Milo Nora Otto Pia".split()
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


def step_examples(n: int, seed: int) -> list[SFTExample]:
    """Decision-step-like examples: each prompt names people, the completion searches one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.sample(NAMES, 3)
        prompt = f'def decide():\n  question = "Who taught the teacher of {a} {b}?"\n  remaining = {rng.randint(1, 9)}\n  action = '
        completion = rng.choice([f'Search("{c} {a}")\n', "Terminate()\n", f'Search("{b}")\n'])
        out.append(SFTExample(prompt, completion))
    return out


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """(tokenizer, model dir) of a 0.1M-parameter random Llama with a 512-token BPE."""
    root = tmp_path_factory.mktemp("zoo")
    rng = random.Random(1)
    texts = [e.prompt + e.completion for e in step_examples(100, 1)]
    texts += [" ".join(rng.choices(NAMES, k=40)) + "." for _ in range(100)]
    tok = train_tokenizer(texts, root / "tok", vocab_size=512)
    return tok, init_model(TINY, root / "tok", root / "model", seed=0)


def fresh(zoo):
    return AutoModelForCausalLM.from_pretrained(zoo[1], dtype=torch.float32)


def hand_loss(model, batch):
    """Per-token negative log-likelihood summed by explicit loops over the label grid."""
    with torch.no_grad():
        logp = torch.log_softmax(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1
        )
    total, weight = 0.0, 0.0
    for row, w in enumerate(batch["weights"].tolist()):
        for t in range(1, batch["labels"].shape[1]):
            label = int(batch["labels"][row, t])
            if label != IGNORE:
                total -= w * float(logp[row, t - 1, label])
                weight += w
    return total / weight


@pytest.mark.parametrize("plain_head", [True, False])
def test_sft_loss_equals_a_hand_computation(zoo, monkeypatch, plain_head):
    tok, _ = zoo
    model = fresh(zoo).eval()
    if not plain_head:  # the generic path: full logits from model(...)
        monkeypatch.setattr(trainer, "_PLAIN_HEAD_MODELS", frozenset())
    examples = step_examples(3, 7)
    examples[1] = SFTExample(examples[1].prompt, examples[1].completion, weight=2.5)
    data, _ = tokenize_all(tok, [*examples, "Nora Pell taught Ivo Hale."], 128)
    batch = collate(data, tok.pad_token_id)
    with torch.no_grad():
        loss, n = sft_loss(model, batch)
    assert torch.isfinite(loss)
    assert n == int((batch["labels"][:, 1:] != IGNORE).sum())
    assert loss.item() == pytest.approx(hand_loss(model, batch), rel=1e-5)


def test_loss_is_a_token_mean_unmoved_by_padding(zoo):
    tok, _ = zoo
    model = fresh(zoo).eval()
    data, _ = tokenize_all(tok, step_examples(2, 3), 128)
    a, b = collate(data[:1], tok.pad_token_id), collate(data[1:], tok.pad_token_id)
    both = collate(data, tok.pad_token_id)
    extra = 9  # the same first sequence with 9 more padding positions
    wide = {
        "input_ids": torch.cat([a["input_ids"], torch.full((1, extra), tok.pad_token_id)], 1),
        "attention_mask": torch.cat([a["attention_mask"], torch.zeros(1, extra, dtype=torch.long)], 1),
        "labels": torch.cat([a["labels"], torch.full((1, extra), IGNORE)], 1),
    }
    with torch.no_grad():
        (la, na), (lb, nb), (lab, nab) = sft_loss(model, a), sft_loss(model, b), sft_loss(model, both)
        assert sft_loss(model, wide)[0].item() == pytest.approx(la.item(), rel=1e-5)
    assert nab == na + nb
    assert lab.item() == pytest.approx((la.item() * na + lb.item() * nb) / (na + nb), rel=1e-5)


def greedy_step(model, tok, prompt: str, max_new_tokens: int = 24) -> str:
    """The model's greedy output for a step prompt, cut after its first newline."""
    ids = torch.tensor([[tok.bos_token_id, *tok.encode(prompt, add_special_tokens=False)]])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
        )
    text = tok.decode(out[0, ids.shape[1] :])
    return text[: text.index("\n") + 1] if "\n" in text else text


def test_training_memorises_ten_steps_and_saves_a_loadable_dir(zoo, tmp_path):
    tok, _ = zoo
    examples = step_examples(10, 5)
    model = fresh(zoo)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert sum(greedy_step(model, tok, e.prompt) == e.completion for e in examples) == 0
    cfg = TrainConfig(lr=3e-3, max_steps=150, batch_size=10, warmup_steps=10, precision="fp32", log_every=25)
    result = train(model, tok, examples, cfg, out_dir=tmp_path / "ckpt", progress=False)

    assert result.steps == len(result.losses) == 150 and result.skipped == 0
    assert sum(result.losses[-10:]) / 10 < 0.1 * sum(result.losses[:10]) / 10
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.tokens > result.target_tokens > 0 and result.tokens_per_s > 0
    assert [greedy_step(model, tok, e.prompt) for e in examples] == [e.completion for e in examples]

    saved = tmp_path / "ckpt"
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= {
        p.name for p in saved.iterdir()
    }
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary dir left behind
    assert json.loads((saved / "training.json").read_text())["steps"] == 150
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert reloaded.config._attn_implementation == model.config._attn_implementation


def test_stop_below_ends_a_run_once_its_logged_loss_is_learned(zoo, tmp_path):
    tok, _ = zoo
    examples = step_examples(10, 5)
    cfg = TrainConfig(lr=3e-3, max_steps=400, batch_size=10, warmup_steps=10, precision="fp32", log_every=25,
                      stop_below=0.5)
    result = train(fresh(zoo), tok, examples, cfg, out_dir=tmp_path / "ckpt", progress=False)
    assert result.steps == len(result.losses) < 400 and result.steps % 25 == 0
    assert sum(result.losses[-25:]) / 25 < 0.5 <= sum(result.losses[-50:-25]) / 25  # stopped at the first window
    assert json.loads((tmp_path / "ckpt" / "training.json").read_text())["steps"] == result.steps


def test_same_seed_same_run_and_dirs_train_into_out_dir(zoo, tmp_path):
    tok, model_dir = zoo
    examples = [*step_examples(12, 9), "Ada Bela taught Cyro Dara. " * 20]
    cfg = TrainConfig(max_steps=4, batch_size=4, warmup_steps=1, precision="bf16", seed=3)
    first = train(fresh(zoo), tok, examples, cfg, progress=False)
    again = train(fresh(zoo), tok, examples, cfg, progress=False)
    other = train(fresh(zoo), tok, examples, TrainConfig(**{**cfg.__dict__, "seed": 4}), progress=False)
    assert first.losses == again.losses and first.precision == "bf16"
    assert first.losses != other.losses
    # a model dir in, a new dir out (twice: the second run replaces the first)
    for _ in range(2):
        result = train(model_dir, None, examples, cfg, out_dir=tmp_path / "out", progress=False)
    assert result.losses == first.losses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(ValueError, match="out_dir is required"):
        train(model_dir, None, examples, cfg)


def test_epochs_mix_sft_and_text_and_follow_the_schedule(zoo):
    tok, _ = zoo
    examples = [*step_examples(20, 11), " ".join(NAMES * 8)]
    data, _ = tokenize_all(tok, examples, 64)
    cfg = TrainConfig(lr=1e-3, epochs=2, batch_size=8, warmup_steps=2, max_len=64, precision="fp32")
    result = train(fresh(zoo), tok, examples, cfg, progress=False)
    labelled = sum(sum(label != IGNORE for label in t.labels[1:]) for t in data)
    assert result.target_tokens == 2 * labelled  # every sequence twice, text and steps alike
    assert result.tokens == 2 * sum(len(t) for t in data)
    assert result.lrs[0] == pytest.approx(5e-4) and result.lrs[1] == pytest.approx(1e-3)
    assert result.lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert result.lrs[1:] == sorted(result.lrs[1:], reverse=True)  # warmup, then only down
    assert all(x > 0 for x in result.losses) and result.losses[-1] < result.losses[0]


def test_lr_schedules():
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 1, 5, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(9, 10, 2, "linear") == 0.0 and lr_factor(5, 10, 2, "linear") == pytest.approx(0.5)
    cosine = [lr_factor(s, 10, 2, "cosine") for s in range(2, 10)]
    assert cosine == sorted(cosine, reverse=True) and cosine[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "field, value",
    [("lr", 0.0), ("batch_size", 0), ("precision", "fp8"), ("batch_tokens", 10), ("max_len", 1), ("stop_below", -1.0)],
)
def test_bad_config_is_one_line_error(field, value):
    with pytest.raises(ConfigError, match=f"^TrainConfig: {field}: must be .*, got {value!r}$"):
        TrainConfig(**{field: value})


class _SGD:
    """A plain stepper for ``run_steps``: SGD at a fixed lr, counting its calls."""

    def __init__(self, model, lr=0.05):
        self.opt = torch.optim.SGD(model.parameters(), lr=lr)
        self.calls = []

    def begin(self, step):
        self.calls.append(("begin", step))
        return 0.05

    def backward(self, loss):
        self.calls.append("backward")
        loss.backward()

    def end(self):
        self.calls.append("end")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def test_run_steps_takes_every_micro_batch_and_an_empty_one_changes_nothing(zoo):
    """The one loop of train() and the DeepSpeed fit: an empty micro-batch still runs a pass (every
    rank takes the same passes) but adds no gradient, no token and no loss; a step's loss is its
    micro-batches' summed over their count; after_step can stop the run."""
    tok, _ = zoo
    data, _ = tokenize_all(tok, step_examples(6, 3), 256)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    plain, padded = fresh(zoo), fresh(zoo)
    one = trainer.run_steps(plain, data, pad, [[[0, 1, 2]], [[3, 4, 5]]], _SGD(plain), "test")
    stepper = _SGD(padded)
    two = trainer.run_steps(padded, data, pad, [[[0, 1, 2], []], [[3, 4, 5], []]], stepper, "test")
    assert stepper.calls[:4] == [("begin", 0), "backward", "backward", "end"]
    assert two.tokens == one.tokens and two.targets == one.targets > 0
    assert two.losses == pytest.approx([x / 2 for x in one.losses], rel=1e-6)
    for (name, a), b in zip(plain.state_dict().items(), padded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    stopped = trainer.run_steps(fresh(zoo), data, pad, [[[0]], [[1]], [[2]]], _SGD(fresh(zoo)), "test",
                                after_step=lambda done: len(done.losses) == 2)
    assert len(stopped.losses) == 2 and stopped.lrs == [0.05, 0.05]


def test_run_steps_stops_on_a_loss_that_is_not_finite_naming_where(zoo):
    tok, _ = zoo
    data, _ = tokenize_all(tok, step_examples(2, 4), 256)
    model = fresh(zoo)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"^fit L on rank 1: loss is nan at step 0 \(lr 5.00e-02\)$"):
        trainer.run_steps(model, data, 0, [[[0, 1]]], _SGD(model), "fit L on rank 1")
