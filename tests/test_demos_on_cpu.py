"""The noisy demonstrator on a tiny toy world: deterministic, parseable, identical to what the runner renders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from actors.search.bm25 import BM25Search
from agent.parsers import parse_answer, parse_check, parse_decision, parse_summary
from agent.runner import EpisodeRunner
from agent.trajectory import Question
from core.config import load_config
from core.engine import Sample
from toyworld.build import aux_seed, build_world_data, load_questions
from toyworld.demos import FIX, NOISE_KINDS, WorldFacts, demonstrate
from toyworld.drill import MAX_WORDS, MIN_WORDS, copy_drill
from toyworld.graph import WorldSize, make_world
from toyworld.modelzoo import train_tokenizer
from toyworld.pools import NAME_POOLS
from toyworld.rename import renamed
from toyworld.render import render_world
from toyworld.world import AGENT_STEP_KEYS, RECIPES, TOY_AGENT, agent_overrides, build_world, with_world_paths

ROOT = Path(__file__).resolve().parents[1]
SEED = 7


@pytest.fixture(scope="module")
def aux(tmp_path_factory):
    """Auxiliary world 0 of a tiny world: its question records, facts and BM25 search."""
    root = tmp_path_factory.mktemp("world")
    size = WorldSize.tiny()
    build_world_data(root, SEED, size, n_aux=1)
    world = make_world(aux_seed(SEED, 0), size, avoid=make_world(SEED, size).triples())
    facts = WorldFacts(world, render_world(world))
    search = BM25Search(root / "aux" / "0" / "corpus.jsonl.gz", cache_dir=root / "bm25")
    records = load_questions(root / "aux" / "0" / "questions.jsonl")
    return records, facts, search


def _completions(demo_set):
    return [[ex.completion for ex in d.examples()] for d in demo_set.demos]


def test_every_fact_sentence_is_found(aux):
    _, facts, _ = aux
    for (subject, relation), pid in facts.where.items():
        obj, sentence = facts.fact(pid, relation)
        assert obj == facts.world.label(facts.world.obj(subject, relation))
        assert sentence in facts.text[pid]


def test_deterministic_per_seed(aux):
    records, facts, search = aux
    a = demonstrate(records, facts, search, TOY_AGENT, noise=0.3, seed=1)
    b = demonstrate(records, facts, search, TOY_AGENT, noise=0.3, seed=1)
    c = demonstrate(records, facts, search, TOY_AGENT, noise=0.3, seed=2)
    assert _completions(a) == _completions(b)
    assert [d.noise_events for d in a.demos] == [d.noise_events for d in b.demos]
    assert _completions(a) != _completions(c)
    # a question's demonstration does not depend on the rest of the batch
    alone = demonstrate(records[5:6], facts, search, TOY_AGENT, noise=0.3, seed=1)
    assert _completions(alone) == _completions(a)[5:6]


def test_every_completion_parses_in_its_step_grammar(aux):
    records, facts, search = aux
    demos = demonstrate(records, facts, search, TOY_AGENT, noise=0.5, seed=3)
    n = 0
    for d in demos.demos:
        shown: list[int] = []
        for step in d.trajectory.steps:
            if step.kind == "search":
                shown += [s.link_id for s in step.snippets]
                last = [s.link_id for s in step.snippets]
            if not step.is_llm:
                continue
            text = step.samples[0].text
            assert text.startswith(" ") and "\n" not in text
            if step.kind == "decision":
                parse_decision(text)
            elif step.kind == "summarize":
                parse_summary(text, last)
            elif step.kind == "answer":
                parse_answer(text, shown)
            else:
                parse_check(text, shown)
            n += 1
        assert all(ex.completion.endswith("\n") for ex in d.examples())
    assert n == sum(len(d.examples()) for d in demos.demos) > 0


class _Replay:
    """An engine that answers each prompt with the next completion of a recorded demonstration."""

    def __init__(self, completions):
        self.completions = list(completions)
        self.prompts: list[str] = []

    def generate(self, prompts, n, temperature, max_new_tokens, stop=None, seed=None):
        assert len(prompts) == 1
        self.prompts.append(prompts[0])
        text = self.completions.pop(0).removesuffix("\n")
        return [[Sample(text, 5, -1.0)] * n]


def test_prompts_equal_what_the_runner_renders(aux):
    records, facts, search = aux
    demos = demonstrate(records[:12], facts, search, TOY_AGENT, noise=0.4, seed=4)
    for d, r in zip(demos.demos, records[:12], strict=True):
        examples = d.examples()
        engine = _Replay(ex.completion for ex in examples)
        (traj,) = EpisodeRunner(engine, search, TOY_AGENT).run([Question(r["id"], r["question"])])
        assert engine.prompts == [ex.prompt for ex in examples]
        assert traj.answer == d.trajectory.answer and traj.end_reason == "answered"


def test_noise_zero_answers_correctly(aux):
    records, facts, search = aux
    demos = demonstrate(records, facts, search, TOY_AGENT, noise=0.0, fix_rate=0.0, seed=0)
    assert all(not d.noise_events for d in demos.demos)
    assert demos.accuracy >= 0.95, demos.stats()


def test_noise_produces_every_kind_and_lowers_accuracy(aux):
    records, facts, search = aux
    demos = demonstrate(records, facts, search, TOY_AGENT, noise=0.4, fix_rate=0.5, seed=0)
    seen = set().union(*(d.noise_events for d in demos.demos))
    assert seen == set(NOISE_KINDS) | {FIX}
    assert 0.2 < demos.accuracy < 0.9, demos.stats()
    assert demos.stats()["clean_trajectories"] > 0
    # a revision replaces a wrong answer by the one the notes support
    fixed = [d for d in demos.demos if FIX in d.noise_events]
    assert any(s.output != "Keep" for d in fixed for s in d.trajectory.steps if s.kind in ("relevance", "grounding"))


def test_bad_arguments_are_rejected(aux):
    records, facts, search = aux
    with pytest.raises(ValueError, match="noise"):
        demonstrate(records[:1], facts, search, TOY_AGENT, noise=1.5)
    fewshot = type(TOY_AGENT)(prompt_style="fewshot")
    with pytest.raises(ValueError, match="zeroshot"):
        demonstrate(records[:1], facts, search, fewshot)


def test_toy_config_acts_like_the_demonstrations():
    raw = yaml.safe_load((ROOT / "configs" / "toy.yaml").read_text())
    agent = raw["agent"]
    for key in AGENT_STEP_KEYS:
        assert agent.get(key, getattr(TOY_AGENT, key)) == getattr(TOY_AGENT, key), key
    assert not raw.get("engine", {}).get("model") and not raw.get("search", {}).get("corpus")


def test_world_paths_fill_from_a_built_world(tmp_path):
    world = tmp_path / "w"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"seed": 3, "size": "tiny", "recipe_version": RECIPES["tiny"].version}))
    cfg = load_config(ROOT / "configs" / "toy.yaml", [f"world.dir={world}", "world.seed=3", "world.size=tiny"])
    filled = with_world_paths(cfg)
    assert filled.engine.model == str(world / "models" / "L-warm")
    assert filled.search.corpus == str(world / "corpus.jsonl.gz")
    assert cfg.engine.model == ""  # the original is left alone
    kept = with_world_paths(load_config(ROOT / "configs" / "toy.yaml",
                                        [f"world.dir={world}", "world.seed=3", "world.size=tiny",
                                         "engine.model=elsewhere"]))
    assert kept.engine.model == "elsewhere"


def test_a_world_of_an_older_recipe_is_rebuilt_and_one_of_the_current_recipe_reused(tmp_path, monkeypatch):
    """The cache key is the seed, size and threads plus the size's recipe version: a tiny world built
    before its bases were finished on the demonstration steps (no ``recipe_version``: 1) is rebuilt,
    and replaced only once the new one is complete; a default world of the current version is kept."""
    from toyworld import world as w

    builds = []

    def fake_build(root, seed, size, recipe, threads, progress):
        builds.append((size, recipe.version))
        (root / "models").mkdir()
        record = {"seed": seed, "threads": threads, "size": size, "recipe_version": recipe.version}
        (root / "world.json").write_text(json.dumps(record))
        return record

    monkeypatch.setattr(w, "_build", fake_build)
    stale = tmp_path / "tiny-0"
    (stale / "models" / "L-base").mkdir(parents=True)
    (stale / "world.json").write_text(json.dumps({"seed": 0, "size": "tiny", "threads": 1}))
    record = build_world(stale, 0, "tiny", progress=False)
    assert builds == [("tiny", RECIPES["tiny"].version)] and RECIPES["tiny"].version > 1
    assert json.loads((stale / "world.json").read_text()) == record and not (stale / "models" / "L-base").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-0"]  # nothing left beside it
    assert build_world(stale, 0, "tiny", progress=False) == record and len(builds) == 1
    with pytest.raises(ValueError, match="seed 0"):
        build_world(stale, 1, "tiny")

    default = tmp_path / "toy-0"
    default.mkdir()
    kept = {"seed": 0, "size": "default", "threads": 1, "recipe_version": RECIPES["default"].version}
    (default / "world.json").write_text(json.dumps(kept))
    assert build_world(default, 0, progress=False) == kept and len(builds) == 1


def test_eval_of_a_world_uses_the_step_settings_its_bases_learned(tmp_path):
    assert agent_overrides(tmp_path) == [f"agent.{k}={getattr(TOY_AGENT, k)}" for k in AGENT_STEP_KEYS]
    (tmp_path / "world.json").write_text(json.dumps({"agent": {"topk": 5, "search_budget": 3}}))
    got = dict(o.split("=", 1) for o in agent_overrides(tmp_path))
    assert got == {"agent.prompt_style": "zeroshot", "agent.search_budget": "3", "agent.topk": "5",
                   "agent.max_new_tokens": str(TOY_AGENT.max_new_tokens), "agent.self_checks": "True"}
    cfg = load_config(None, list(agent_overrides(tmp_path)))  # every override is a valid config key and value
    assert (cfg.agent.topk, cfg.agent.search_budget, cfg.agent.prompt_style) == (5, 3, "zeroshot")


# ------------------------------------------------------------ the bases' data: renaming and the copy drill


def test_renaming_keeps_each_example_consistent_and_each_name_in_its_pool(aux):
    records, facts, search = aux
    demos = demonstrate(records[:20], facts, search, TOY_AGENT, noise=0.0, fix_rate=0.0, seed=0)
    steps = [ex for d in demos.demos for ex in d.examples()]
    out = list(renamed(steps, seed=3))
    assert out == list(renamed(steps, seed=3)) and out != list(renamed(steps, seed=4))
    pool_of = {w: i for i, p in enumerate(NAME_POOLS.values()) for w in p}
    changed = 0
    for before, after in zip(steps, out, strict=True):
        a = re.findall(r"\w+", before.prompt + before.completion)
        b = re.findall(r"\w+", after.prompt + after.completion)
        assert len(a) == len(b)
        shifts = set()
        for x, y in zip(a, b, strict=True):
            if x in pool_of:
                assert pool_of[y] == pool_of[x], (x, y)  # a city stays a city, a surname a surname
                changed += x != y
            elif x.isdigit() and len(x) == 4:
                shifts.add(int(y) - int(x))
            else:
                assert x == y  # the templates and the step grammar are untouched
        assert len(shifts) <= 1  # one shift per example keeps "founded earlier" true
        kind = after.prompt.split("(", 1)[0]
        if kind == "def summarize" and after.completion.strip() != "None":
            body = re.sub(r"\s*\[link_id=\d+\]", "", after.completion.strip().strip('"'))
            for sentence in re.split(r"(?<=\.) ", body):
                assert sentence in after.prompt  # the note still copies the renamed snippet
            shown = [int(i) for i in re.findall(r"Snippet\(link_id=(\d+)", after.prompt)]
            assert parse_summary(after.completion.strip(), shown).text
    assert changed > len(steps)


def test_renaming_gives_every_text_its_own_names():
    texts = ["Anna Berg was born in 1950 in Wells."] * 50
    out = list(renamed(texts, seed=0))
    assert len(set(out)) > 40 and all(t.endswith(".") and " was born in " in t for t in out)
    assert list(renamed(["No names here."], seed=0)) == ["No names here."]
    every = " ".join(w for pool in NAME_POOLS.values() for w in pool)
    (out,) = renamed([every], seed=1)
    assert out != every and sorted(out.split()) == sorted(every.split())  # a permutation: every word renamed


def test_copy_drill_is_deterministic_and_copies_whole_word_tokens(tmp_path):
    tok = train_tokenizer(["Alpha Bravo Charlie Delta Echo Foxtrot Golf Hotel India Juliet Kilo Lima"] * 20,
                          tmp_path / "tok", vocab_size=420)
    drill = copy_drill(tok, 30, seed=1)
    assert drill == copy_drill(tok, 30, seed=1) and drill != copy_drill(tok, 30, seed=2)
    for ex in drill:
        seq = re.fullmatch(r'COPY = "(.*)"\nAGAIN =', ex.prompt).group(1)
        assert ex.completion == f' "{seq}"\n' and MIN_WORDS <= len(seq.split()) <= MAX_WORDS
        assert all(len(tok.encode(" " + w)) == 1 for w in seq.split())
    small = train_tokenizer(["ab cd"] * 5, tmp_path / "small", vocab_size=270)
    with pytest.raises(ValueError, match="whole-word tokens"):
        copy_drill(small, 1, seed=0)
