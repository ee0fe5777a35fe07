"""Per-step training data: exact prompt/completion boundary, truncation, padding, batching."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.data import (
    IGNORE,
    SFTExample,
    Tokenized,
    collate,
    make_batches,
    padding_fraction,
    tokenize_all,
    tokenize_example,
    tokenize_lm,
)
from toyworld.modelzoo import train_tokenizer

PROMPT = 'def decide():\n  question = "Who founded the company that published Ivo Marsh?"\n  action = '
COMPLETION = 'Search("Ivo Marsh")\n'


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A small byte-level BPE trained on step-like text (the toy world's tokenizer kind)."""
    rng = random.Random(0)
    words = "Ivo Marsh Nora Pell Apex Works founded published question action Search Terminate".split()
    texts = [PROMPT + COMPLETION] * 20 + [" ".join(rng.choices(words, k=30)) for _ in range(200)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=400)


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_labels_cover_exactly_the_completion(tok):
    ids, labels = tokenize_example(tok, SFTExample(PROMPT, COMPLETION), max_len=512)
    prompt_ids, completion_ids = enc(tok, PROMPT), enc(tok, COMPLETION)
    assert ids == [tok.bos_token_id, *prompt_ids, *completion_ids]
    assert labels == [IGNORE] * (1 + len(prompt_ids)) + completion_ids
    trained = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert tok.decode(trained) == COMPLETION
    assert tok.decode(ids[1 : 1 + len(prompt_ids)]) == PROMPT


def test_prompt_and_completion_are_tokenized_apart(tok):
    # "= " then "Search" tokenized jointly would glue the space to "Search"; the engine
    # tokenizes the prompt alone, so training must too.
    ids, _ = tokenize_example(tok, SFTExample(PROMPT, COMPLETION), max_len=512)
    joint = [tok.bos_token_id, *enc(tok, PROMPT + COMPLETION)]
    assert ids != joint
    assert ids[: 1 + len(enc(tok, PROMPT))] == [tok.bos_token_id, *enc(tok, PROMPT)]


def test_long_prompt_loses_its_start_and_keeps_the_completion(tok):
    prompt_ids, completion_ids = enc(tok, PROMPT), enc(tok, COMPLETION)
    max_len = 1 + len(completion_ids) + 5
    ids, labels = tokenize_example(tok, SFTExample(PROMPT, COMPLETION), max_len=max_len)
    assert len(ids) == len(labels) == max_len
    assert ids == [tok.bos_token_id, *prompt_ids[-5:], *completion_ids]
    assert tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE]) == COMPLETION


def test_example_whose_completion_cannot_fit_is_skipped_and_counted(tok):
    n = len(enc(tok, COMPLETION))
    assert tokenize_example(tok, SFTExample(PROMPT, COMPLETION), max_len=n) is None  # bos needs one more
    assert tokenize_example(tok, SFTExample(PROMPT, COMPLETION), max_len=n + 1) is not None
    data, skipped = tokenize_all(
        tok, [SFTExample(PROMPT, COMPLETION), SFTExample("q", "x" * 200 + "\n")], n + 3
    )
    assert (len(data), skipped) == (1, 1)


def test_lm_chunks_train_every_transition_once(tok):
    text = " ".join(["Nora Pell founded Apex Works."] * 30)
    full = [tok.bos_token_id, *enc(tok, text), tok.eos_token_id]
    chunks = tokenize_lm(tok, text, max_len=16)
    assert all(2 <= len(ids) <= 16 and labels == ids for ids, labels in chunks)
    rebuilt = chunks[0][0] + [i for ids, _ in chunks[1:] for i in ids[1:]]
    assert rebuilt == full
    assert all(a[-1] == b[0] for (a, _), (b, _) in zip(chunks, chunks[1:], strict=False))


def test_tokenize_all_mixes_examples_and_text(tok):
    data, skipped = tokenize_all(tok, [SFTExample(PROMPT, COMPLETION, weight=2.0), "Apex Works"], 64)
    assert skipped == 0 and len(data) == 2
    assert data[0].weight == 2.0 and IGNORE in data[0].labels
    assert data[1].labels == data[1].input_ids
    with pytest.raises(TypeError, match="example 0 is a dict"):
        tokenize_all(tok, [{"prompt": "x"}], 64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"completion": 'Search("x")'}, "ending in its"),
        ({"completion": "two\nlines\n"}, "one line"),
        ({"weight": 0.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
    ],
)
def test_bad_examples_are_rejected(kwargs, message):
    fields = {"prompt": "p", "completion": "c\n", **kwargs}
    with pytest.raises(ValueError, match=message):
        SFTExample(**fields)


def test_collate_pads_right_and_masks_labels():
    batch = [Tokenized((5, 6, 7), (IGNORE, 6, 7), 2.0), Tokenized((8, 9), (8, 9))]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["labels"].tolist() == [[IGNORE, 6, 7], [8, 9, IGNORE]]
    assert out["weights"].tolist() == [2.0, 1.0]
    assert out["input_ids"].dtype == torch.long
    with pytest.raises(ValueError, match="empty batch"):
        collate([], 0)


def _lengths(n=500, seed=0):
    rng = random.Random(seed)
    return [rng.randint(20, 200) for _ in range(n)]


def test_batches_are_deterministic_per_seed():
    lengths = _lengths()
    a = make_batches(lengths, batch_size=16, shuffle_seed=3)
    assert a == make_batches(lengths, batch_size=16, shuffle_seed=3)
    assert a != make_batches(lengths, batch_size=16, shuffle_seed=4)
    assert make_batches(lengths, batch_size=16, shuffle_seed=(3, 1)) != make_batches(
        lengths, batch_size=16, shuffle_seed=(3, 2)
    )


def test_token_budget_is_respected_and_grouping_cuts_padding():
    lengths = _lengths()
    batches = make_batches(lengths, batch_tokens=2000, shuffle_seed=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 2000 for b in batches)
    grouped = padding_fraction(lengths, make_batches(lengths, batch_size=16, shuffle_seed=0))
    naive = padding_fraction(lengths, make_batches(lengths, batch_size=16, shuffle_seed=0, group_batches=1))
    assert grouped < 0.05 < 0.3 < naive


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=4, max_size=120),
    world_size=st.integers(1, 4),
    batch_size=st.integers(1, 9),
    by_tokens=st.booleans(),
    seed=st.integers(0, 3),
)
def test_ranks_share_each_epoch_disjointly_and_completely(lengths, world_size, batch_size, by_tokens, seed):
    size = {"batch_tokens": 64 + batch_size * 16} if by_tokens else {"batch_size": batch_size}
    shards = [
        make_batches(lengths, shuffle_seed=seed, rank=r, world_size=world_size, group_batches=2, **size)
        for r in range(world_size)
    ]
    seen = [i for shard in shards for b in shard for i in b]
    assert sorted(seen) == list(range(len(lengths)))  # every sequence once, across ranks
    assert len({len(shard) for shard in shards}) == 1  # every rank runs the same number of steps
    assert all(b for shard in shards for b in shard)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 4, "batch_tokens": 100}, "exactly one"),
        ({}, "exactly one"),
        ({"batch_size": 4, "rank": 2, "world_size": 2}, "rank"),
        ({"batch_size": 4, "world_size": 9}, "cannot feed 9 ranks"),
        ({"batch_tokens": 10}, "below the longest"),
    ],
)
def test_bad_batching_requests_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_batches([5, 30, 7, 8], **kwargs)
