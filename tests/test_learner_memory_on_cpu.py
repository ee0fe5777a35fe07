"""Learner memory, the parts that need no process group: micro-batch config, the split into
length-bucketed micro-batches, the shared loss normaliser, and how a fit loads its model.

The DeepSpeed ranks themselves (accumulation against one batch, bf16 under ZeRO-3 with
zero.Init, the per-parameter save) run in ``tests/slow/test_learner_memory.py``.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from core.config import ConfigError, LearnerConfig, load_config
from learner.data import IGNORE, SFTExample, Tokenized, collate, micro_batches, target_weight, tokenize_all
from learner.deepspeed_rank import attention_for, ds_config, load_model
from learner.trainer import sft_loss
from toyworld.modelzoo import init_model, train_tokenizer

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
NAMES = "Ada Bela Cyro Dara Emil Fenna Gus Hale".split()


def examples(n: int, seed: int = 0) -> list[SFTExample]:
    """Step examples of varied length (prompt padding words) so micro-batches differ in size."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.sample(NAMES, 3)
        filler = " ".join(rng.choices(NAMES, k=rng.randint(0, 12)))
        out.append(SFTExample(f'q = "Who taught {a} {b}?" {filler}\naction = ', f'Search("{c} {a}")\n',
                              weight=rng.choice([1.0, 2.0])))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    train_tokenizer([e.prompt + e.completion for e in examples(100, 1)], root / "tok", vocab_size=300)
    return init_model(TINY, root / "tok", root / "base", seed=0)


# ------------------------------------------------------------ config


def test_accumulation_is_derived_from_the_micro_batch():
    cfg = LearnerConfig(world_size=4, batch_size=64, micro_batch_size=2)
    assert (cfg.micro_batch, cfg.gradient_accumulation_steps) == (2, 8)
    ds = ds_config(cfg)
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 8
    assert ds["train_batch_size"] == 64
    # 0 keeps the earlier layout: each rank's whole share in one pass
    legacy = LearnerConfig(world_size=2, batch_size=8)
    assert (legacy.micro_batch, legacy.gradient_accumulation_steps) == (4, 1)
    assert ds_config(legacy)["train_micro_batch_size_per_gpu"] == 4


def test_a_micro_batch_that_does_not_divide_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learner:\n  world_size: 4\n  batch_size: 64\n  micro_batch_size: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: learner.micro_batch_size: ") and "\n" not in msg
    assert "64" in msg and "3 x world_size 4" in msg
    with pytest.raises(ConfigError, match="learner.micro_batch_size"):  # --set goes through the same check
        load_config(None, ["learner.world_size=4", "learner.batch_size=64", "learner.micro_batch_size=5"])
    with pytest.raises(ConfigError, match="micro_batch_size"):  # and so does a changed copy
        dataclasses.replace(LearnerConfig(world_size=4, batch_size=64, micro_batch_size=4), world_size=3)
    ok = load_config(None, ["learner.world_size=4", "learner.batch_size=64", "learner.micro_batch_size=4"])
    assert ok.learner.gradient_accumulation_steps == 4


# ------------------------------------------------------------ micro-batches


def test_micro_batches_bucket_by_length_and_cover_the_batch():
    rng = random.Random(3)
    lengths = [rng.randint(5, 200) for _ in range(64)]
    batch = rng.sample(range(64), 16)
    parts = micro_batches(batch, lengths, 4)
    assert [len(p) for p in parts] == [4, 4, 4, 4]
    assert sorted(i for p in parts for i in p) == sorted(batch)
    flat = [lengths[i] for p in parts for i in p]
    assert flat == sorted(flat, reverse=True)  # similar lengths share a micro-batch
    assert micro_batches(list(reversed(batch)), lengths, 4) == parts  # a function of the set: deterministic

    def padded(ps):
        return sum(len(p) * max(lengths[i] for i in p) for p in ps if p)

    unsorted = [batch[k::4] for k in range(4)]
    assert padded(parts) < padded(unsorted)


def test_a_short_batch_leaves_trailing_micro_batches_empty():
    assert micro_batches([5, 1, 2], [3, 9, 4, 0, 0, 1], 4) == [[1], [2], [5], []]
    assert micro_batches([0, 1, 2, 3, 4], [1] * 5, 2) == [[0, 1, 2], [3, 4]]  # one extra row is spread
    with pytest.raises(ValueError, match="count"):
        micro_batches([0], [1], 0)


# ------------------------------------------------------------ the loss


def test_micro_batch_losses_add_up_to_the_batch_loss(base):
    """With the batch's total token weight as normaliser, the micro-batch losses and their
    gradients sum to the whole batch's (weighted token-mean) loss and gradient."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    data, _ = tokenize_all(tok, examples(16), 96)
    whole = collate(data, tok.pad_token_id)
    loss, _ = sft_loss(model, whole)
    loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    total = sum(target_weight(t) for t in data)
    assert total == pytest.approx(float((whole["weights"][:, None] * (whole["labels"][:, 1:] != IGNORE)).sum()))
    parts = micro_batches(range(16), [len(t) for t in data], 4)
    summed = 0.0
    for part in parts:
        part_loss, _ = sft_loss(model, collate([data[i] for i in part], tok.pad_token_id), normalizer=total)
        part_loss.backward()
        summed += part_loss.item()
    assert summed == pytest.approx(loss.item(), rel=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, want[n], atol=1e-6), n


def test_target_weight_counts_labelled_next_tokens():
    t = Tokenized((1, 2, 3, 4), (IGNORE, IGNORE, 3, 4), weight=2.0)
    assert target_weight(t) == 4.0
    assert target_weight(Tokenized((1, 2), (1, 2))) == 1.0  # the first label is never a target


# ------------------------------------------------------------ loading


def test_attention_is_sdpa_where_supported(base):
    assert attention_for(str(base), "auto") == "sdpa"  # Llama supports torch's fused attention
    assert attention_for(str(base), "eager") == "eager"
    model, zero_init = load_model(str(base), LearnerConfig(), {})
    assert model.config._attn_implementation == "sdpa" and zero_init is False
    assert next(model.parameters()).dtype == torch.float32 and model.config.use_cache is False


def test_bf16_loads_in_bf16(base):
    model, _ = load_model(str(base), LearnerConfig(precision="bf16", attn_implementation="eager"), {})
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"


def test_gradient_checkpointing_recomputes_layers_and_keeps_the_gradient(base):
    """A checkpointed layer keeps far fewer tensors for backward and runs its forward twice per
    step (the second time in backward), and the gradients are those of the plain model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    data, _ = tokenize_all(tok, examples(4), 96)
    batch = collate(data, tok.pad_token_id)
    grads, calls, saved = {}, {}, {}
    for on in (False, True):
        model, _ = load_model(str(base), LearnerConfig(gradient_checkpointing=on), {})
        model.train()
        mlp, count, kept = model.model.layers[0].mlp, [0], [0]
        inner_forward = mlp.forward

        def counted(*args, _f=inner_forward, _n=count, **kwargs):
            _n[0] += 1
            return _f(*args, **kwargs)

        mlp.forward = counted  # (module hooks do not fire during torch's recompute)

        def pack(t, _n=kept):
            _n[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = sft_loss(model, batch)
        loss.backward()
        calls[on], saved[on] = count[0], kept[0]
        grads[on] = {n: p.grad for n, p in model.named_parameters()}
        assert model.is_gradient_checkpointing is on
    assert calls == {False: 1, True: 2}
    assert saved[True] < saved[False] / 2, saved
    assert all(torch.allclose(grads[True][n], grads[False][n], atol=1e-6) for n in grads[False])
