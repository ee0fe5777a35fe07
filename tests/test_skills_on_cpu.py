"""Skill probes and gates (toyworld.skills): the probe world, the teacher-forced greedy match, the gate's line."""

from __future__ import annotations

import random
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.data import SFTExample
from learner.trainer import TrainConfig, train
from toyworld.base_models import _check_gate
from toyworld.drill import drill_words, find_drill
from toyworld.graph import WorldSize
from toyworld.modelzoo import init_model, train_tokenizer
from toyworld.skills import SKILLS, SkillGate, SkillGateError, greedy_match, measure, probe_examples, right
from toyworld.world import TOY_AGENT

WORDS = "Ada Bela Cyro Dara Emil Fenna Gus Hale Ivo Juna Kato Lise Milo Nora Otto Pia wrote born".split()
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
        "max_position_embeddings": 512, "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("skills")
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=30)) + "." for _ in range(200)]
    train_tokenizer(texts, root / "tok", vocab_size=400)
    init_model(TINY, root / "tok", root / "model", seed=0)
    return AutoModelForCausalLM.from_pretrained(root / "model"), AutoTokenizer.from_pretrained(root / "model")


def _greedy_line(model, tok, prompt: str) -> str:
    ids = tok(tok.bos_token + prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids.shape[1]:])
    return text.split("\n")[0] + "\n" if "\n" in text else text


def test_greedy_match_is_the_share_greedy_decoding_reproduces(model):
    """A model fitted to some completions: the teacher-forced score equals what model.generate writes."""
    m, tok = model
    rng = random.Random(1)
    fitted = [SFTExample(" ".join(rng.choices(WORDS, k=6)), f" {rng.choice(WORDS)} {rng.choice(WORDS)}\n")
              for _ in range(8)]
    train(m, tok, fitted, TrainConfig(lr=3e-3, max_steps=150, batch_size=8, warmup_steps=5, precision="fp32"),
          progress=False)
    others = [SFTExample(ex.prompt, f" {rng.choice(WORDS)} wrote born\n") for ex in fitted]
    examples = fitted + others
    expected = sum(_greedy_line(m, tok, ex.prompt) == ex.completion for ex in examples) / len(examples)
    assert 0.25 <= expected <= 0.75  # the model learned the fitted ones, not the others
    assert greedy_match(m, tok, examples, batch_size=5) == pytest.approx(expected)
    assert m.training is False


def test_probe_world_gives_each_skill_clean_renamed_steps(tmp_path):
    probes = probe_examples(tmp_path, 3, WorldSize.tiny(), TOY_AGENT, n_questions=30, per_skill=20)
    assert set(probes) == set(SKILLS) and all(probes[s] for s in SKILLS)
    assert all(ex.prompt.startswith("def summarize") and ex.completion.strip() != "None" for ex in probes["copy"])
    assert all("Search(" in ex.completion for ex in probes["query"])
    assert all(ex.prompt.startswith("def answer") for ex in probes["answer"])
    again = probe_examples(tmp_path / "again", 3, WorldSize.tiny(), TOY_AGENT, n_questions=30, per_skill=20)
    assert again == probes  # deterministic per seed


def test_measure_reports_every_skill_it_has_examples_of(model):
    m, tok = model
    scores = measure(m, tok, {"copy": [SFTExample("Ada wrote", " nonsense here Gus\n")], "query": [], "answer": []})
    assert scores == {"copy": 0.0}


def test_a_copied_note_counts_only_if_it_cites_a_shown_link(tmp_path):
    """The copy skill is judged as the agent parses a note: the right sentence under a link the
    step was not shown ends an episode, so it is not a copy; a wrong sentence is not either."""
    probes = probe_examples(tmp_path, 3, WorldSize.tiny(), TOY_AGENT, n_questions=30, per_skill=20)
    later = next(ex for ex in probes["copy"] if "Snippet(link_id=1," not in ex.prompt)
    gold = later.completion
    assert right("copy", later.prompt, gold, gold)
    unshown = re.sub(r"\[link_id=\d+\]", "[link_id=1]", gold)
    assert unshown != gold and not right("copy", later.prompt, gold, unshown)
    assert not right("copy", later.prompt, gold, gold.replace("[link_id=", "[link="))
    assert not right("copy", later.prompt, gold, ' "Nothing here. ' + gold.split(". ")[-1])


def test_gate_names_the_model_the_skill_and_the_accuracy():
    gate = SkillGate(copy=0.6, query=0.8, answer=0.5)
    assert gate.missing({"copy": 0.7, "query": 0.9, "answer": 0.5}) == []
    assert gate.missing({"copy": 0.1, "query": 0.75, "answer": 0.9}) == ["copy", "query"]
    with pytest.raises(SkillGateError) as e:
        _check_gate("L", gate, {"steps": 2000, "skills": {"copy": 0.067, "query": 0.9, "answer": 0.6}})
    assert str(e.value) == ("L-base did not learn to copy a snippet's sentence into a note: 6.7% of the probe "
                            "steps right after 2000 steps (its gate: 60%)")
    _check_gate("L", gate, {"steps": 10, "skills": {"copy": 0.6, "query": 0.8, "answer": 0.5}})


def test_find_drill_asks_for_the_one_sentence_holding_both_words(model):
    _, tok = model
    examples = find_drill(tok, 50, seed=0)
    assert len(examples) >= 45
    for ex in examples:
        text = ex.prompt.split('TEXT = "')[1].split('"')[0]
        key = ex.prompt.split('FIND = "')[1].split('"')[0].split()
        found = ex.completion.strip().strip('"')
        holding = [s.strip() + "." for s in text.split(".") if s.strip() and set(key) <= set(s.split())]
        assert holding == [found]
        assert set(found.rstrip(".").split()) <= set(drill_words(tok))


def test_first_mentions_of_names_carry_no_loss(model):
    """A name word or year a text has not shown yet is not trained; its repeats are (copies)."""
    from learner.data import IGNORE, LMText, tokenize_lm
    from toyworld.rename import first_mentions

    text = "Gus Taylor was born in Hexham in 1932. As a student, Gus Taylor studied at Brightwater College."
    spans = first_mentions(text)
    assert [text[a:b] for a, b in spans] == ["Gus", "Taylor", "Hexham", "1932", "Brightwater"]
    _, tok = model
    (ids, labels), = tokenize_lm(tok, LMText(text, spans), 320)
    plain, = tokenize_lm(tok, text, 320)
    assert ids == plain[0] and plain[1] == ids  # the same tokens; the plain text trains every one
    masked = [i for i, lab in enumerate(labels) if lab == IGNORE]
    assert masked and all(labels[i] == ids[i] for i in range(len(ids)) if i not in masked)
    masked_text = "".join(tok.decode([ids[i]]) for i in masked)
    assert "Gus" in masked_text and "Hexham" in masked_text and masked_text.count("Gus") == 1
