"""The toy world generator: determinism, coverage, question soundness, split and world disjointness,
and answerability with the real BM25 backend. All on the tiny preset (about 200 passages)."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import pytest

from actors.search.bm25 import BM25Search
from toyworld import pools, render
from toyworld.build import build_world_data, iter_corpus, load_questions
from toyworld.graph import ENTITY_TYPES, RELATIONS, WorldSize, make_world
from toyworld.questions import TEMPLATES
from toyworld.render import render_world

SEED = 7
SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    manifest = build_world_data(out, SEED, WorldSize.tiny(), n_aux=2)
    return out, manifest


@pytest.fixture(scope="module")
def world():
    return make_world(SEED, WorldSize.tiny())


def _questions(out: Path) -> dict[str, list[dict]]:
    return {s: load_questions(out / "questions" / f"{s}.jsonl") for s in SPLITS}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mentions(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def test_same_seed_gives_identical_bytes_and_other_seed_differs(built, tmp_path):
    out, _ = built
    again = build_world_data(tmp_path / "again", SEED, WorldSize.tiny(), n_aux=2)
    other = build_world_data(tmp_path / "other", SEED + 1, WorldSize.tiny(), n_aux=2)
    first, second = _files(out), _files(tmp_path / "again")
    assert set(first) >= {"corpus.jsonl.gz", "questions/test.jsonl", "aux/1/corpus.jsonl.gz", "manifest.json"}
    assert first == second
    assert again["seed"] == SEED and other["seed"] == SEED + 1
    third = _files(tmp_path / "other")
    for name in ("corpus.jsonl.gz", "questions/test.jsonl", "aux/0/corpus.jsonl.gz"):
        assert third[name] != first[name], name
    assert gzip.decompress(first["corpus.jsonl.gz"])  # a real gzip stream
    assert first["corpus.jsonl.gz"][4:8] == b"\0\0\0\0"  # mtime 0 in the gzip header


def test_world_has_enough_types_relations_and_templates(built, world):
    out, manifest = built
    assert len({e.type for e in world.entities.values()}) >= 5
    assert set(e.type for e in world.entities.values()) == set(ENTITY_TYPES)
    used = {f.relation for f in world.facts}
    assert len(used) >= 10 and used == set(RELATIONS)
    questions = _questions(out)
    templates = {q["template"] for qs in questions.values() for q in qs}
    assert len(templates) >= 6 and templates <= set(TEMPLATES)
    assert manifest["questions"] == {s: len(questions[s]) for s in SPLITS}
    assert all(manifest["questions"][s] > 0 for s in SPLITS)


def test_names_are_unique_and_lookalikes_have_their_own_facts(world):
    names = [e.name for e in world.entities.values()]
    assert len(names) == len(set(names))
    alikes = [e for e in world.entities.values() if e.lookalike_of is not None]
    assert len(alikes) >= 10
    for e in alikes:
        source = world.entities[e.lookalike_of]
        shared = set(e.name.split()) & set(source.name.split()) - {"The"}
        assert shared and e.name != source.name, (e.name, source.name)
        assert world.facts_of(e.id), e.name


def test_every_word_of_every_name_comes_from_the_pools(world):
    vocab = set(pools.name_words())
    for e in world.entities.values():
        assert set(e.name.split()) <= vocab, e.name


def test_template_words_never_stem_like_name_words():
    """BM25 tells "Nova Press" from "Nova Books" only if name words are rare outside names."""
    import Stemmer

    stem = Stemmer.Stemmer("english").stemWord
    template_words = {w.lower() for table in (render.PHRASES, render.INTROS, render.FILLERS)
                      for phrasings in table.values() for p in phrasings
                      for w in re.findall(r"[A-Za-z]+", p.replace("{s}", "").replace("{o}", ""))}
    template_words |= {w for words in pools.OCCUPATIONS.values() for o in words for w in o.split()}
    template_stems = {stem(w): w for w in template_words}
    clashes = [(w, template_stems[stem(w.lower())]) for w in set(pools.name_words()) - {"The"}
               if stem(w.lower()) in template_stems]
    assert not clashes


def test_lookalike_keeps_all_words_but_one():
    rng = random.Random(0)
    slots = pools.name_slots("company", "publisher")
    for _ in range(50):
        new = pools.lookalike(["Nova", "Press"], slots, rng, taken={"Nova Press"})
        assert new is not None and new != ["Nova", "Press"]
        assert sum(a == b for a, b in zip(new, ["Nova", "Press"], strict=True)) == 1
    assert pools.lookalike(["Nova", "Press"], [("Nova",), ("Press",)], rng, taken=()) is None
    with pytest.raises(ValueError, match="slots"):
        pools.lookalike(["Nova"], slots, rng, taken=())


def test_passages_name_only_their_entity_and_its_objects(world):
    corpus = render_world(world)
    ids = {p["id"] for p in corpus.passages}
    assert len(ids) == len(corpus.passages)
    by_name = {e.name: e for e in world.entities.values()}
    for p in corpus.passages:
        e = by_name[p["title"]]
        assert p["id"].startswith(e.id + "-")
        allowed = {e.name} | {world.label(f.object) for f in world.facts_of(e.id)}
        named = {n for n in by_name if _mentions(p["text"], n)}
        assert named <= allowed, (p, named - allowed)
    # every fact is stated where `where` says, in the passage's own words
    texts = {p["id"]: p["text"] for p in corpus.passages}
    for f in world.facts:
        text = texts[corpus.where[(f.subject, f.relation)]]
        assert world.label(f.object).split()[-1] in text, f


def test_answers_never_appear_in_questions_and_gold_chains_hold(built, world):
    out, _ = built
    triples = world.triples()
    names = {e.name for e in world.entities.values()}
    for qs in _questions(out).values():
        for q in qs:
            assert q["answers"] and q["answers"][0].lower() not in q["question"].lower(), q
            facts = [tuple(f) for f in q["gold_facts"]]
            assert all(f in triples for f in facts), q["id"]
            if q["template"] == "older_company_founder":
                (a, _, ya), (b, _, yb), (older, rel, founder) = facts
                assert ya != yb and older == (a if int(ya) < int(yb) else b) and rel == "founded_by"
                assert {a, b} <= names and founder == q["answers"][0]
            else:  # a chain: each fact starts where the previous one ended; the last object is the answer
                assert all(facts[i][2] == facts[i + 1][0] for i in range(len(facts) - 1)), q["id"]
                assert facts[-1][2] == q["answers"][0] and facts[0][0] in q["question"]
                assert len(q["hops"]) == len(facts) >= 2


def test_no_single_passage_holds_the_facts_of_two_hops(built):
    """A passage "holds" a gold fact when it names both the fact's subject and its object.

    Also: among a question's hop passages, only one names the answer (no early shortcut).
    """
    out, _ = built
    passages = list(iter_corpus(out / "corpus.jsonl.gz"))
    texts = {p["id"]: f"{p['title']} {p['text']}" for p in passages}
    for qs in _questions(out).values():
        for q in qs:
            hop_of = {h["entity"]: i for i, h in enumerate(q["hops"])}
            for p in passages:
                text = texts[p["id"]]
                hops = {hop_of[s] for s, _, o in q["gold_facts"] if _mentions(text, s) and _mentions(text, o)}
                assert len(hops) <= 1, (q["question"], p)
            naming = [i for i, h in enumerate(q["hops"]) if _mentions(texts[h["passage_id"]], q["answers"][0])]
            if q["template"] != "older_company_founder":
                assert naming == [len(q["hops"]) - 1], q
            assert len(naming) == 1, q


def test_target_splits_share_no_gold_fact(built):
    out, _ = built
    facts = {s: {tuple(f) for q in qs for f in q["gold_facts"]} for s, qs in _questions(out).items()}
    assert not facts["test"] & facts["train"]
    assert not facts["dev"] & facts["train"]
    assert not facts["test"] & facts["dev"]


def test_aux_worlds_share_no_fact_triple_with_the_target(built):
    """Disjoint means: no (subject name, relation, object name or value) triple is true in both.

    Names come from shared pools, so the same name (a city, even a person) may exist in
    both worlds; what it is related to differs. Checked on the aux worlds regenerated
    from the manifest's seeds (their rendering must equal the written corpus) and on the
    gold facts in the written aux question files.
    """
    out, manifest = built
    target = make_world(SEED, WorldSize.tiny())
    target_triples = target.triples()
    target_titles = {p["title"] for p in iter_corpus(out / "corpus.jsonl.gz")}
    for i, aux_meta in enumerate(manifest["aux"]):
        aux = make_world(aux_meta["seed"], WorldSize.tiny(), avoid=target_triples)
        assert aux_meta["seed"] != SEED
        assert not aux.triples() & target_triples
        written = list(iter_corpus(out / "aux" / str(i) / "corpus.jsonl.gz"))
        assert written == render_world(aux).passages
        aux_titles = [p["title"] for p in written]
        assert {e.name for e in aux.entities.values()} == set(aux_titles)
        assert set(aux_titles) != target_titles  # other entities, same pools
        aux_q = load_questions(out / "aux" / str(i) / "questions.jsonl")
        assert len(aux_q) == aux_meta["questions"] > 0
        assert not {tuple(f) for q in aux_q for f in q["gold_facts"]} & target_triples


def test_avoid_changes_every_fact_even_of_the_same_seed(world):
    """The aux mechanism at its hardest: same seed, so same names, and every triple must differ."""
    twin = make_world(SEED, WorldSize.tiny(), avoid=world.triples())
    assert [e.name for e in twin.entities.values()] == [e.name for e in world.entities.values()]
    assert len(twin.facts) == len(world.facts)
    assert not twin.triples() & world.triples()


def test_test_questions_are_answerable_with_bm25(built, tmp_path):
    out, _ = built
    search = BM25Search(out / "corpus.jsonl.gz", cache_dir=tmp_path / "bm25")
    test = _questions(out)["test"]
    texts = {p["id"]: p["text"] for p in iter_corpus(out / "corpus.jsonl.gz")}
    found = 0
    for q in test:
        results = search.search([h["query"] for h in q["hops"]], topk=3)
        found += all(h["passage_id"] in [p.id for p in r] for h, r in zip(q["hops"], results, strict=True))
        assert q["answers"][0] in " ".join(texts[h["passage_id"]] for h in q["hops"]), q["id"]
    assert found / len(test) >= 0.9, f"hop recall@3 over whole questions {found}/{len(test)}"


def test_default_size_meets_the_cpu_default_targets(tmp_path):
    """The default world: 1,500-3,000 passages, >= 500 test and 1,000-2,000 train questions, BM25-answerable."""
    manifest = build_world_data(tmp_path / "w", SEED, n_aux=0)
    assert 1500 <= manifest["target"]["passages"] <= 3000
    assert manifest["questions"]["test"] >= 500 and 1000 <= manifest["questions"]["train"] <= 2000
    assert manifest["questions"]["dev"] > 0 and manifest["aux"] == []
    search = BM25Search(tmp_path / "w" / "corpus.jsonl.gz", cache_dir=tmp_path / "bm25")
    test = load_questions(tmp_path / "w" / "questions" / "test.jsonl")
    hops = [h for q in test for h in q["hops"]]
    results = search.search([h["query"] for h in hops], topk=3)
    found = sum(h["passage_id"] in [p.id for p in r] for h, r in zip(hops, results, strict=True))
    assert found / len(hops) >= 0.95, f"hop recall@3 {found}/{len(hops)}"


def test_bad_inputs_fail_with_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="WorldSize.books"):
        WorldSize(books=0)
    with pytest.raises(ValueError, match="WorldSize.cities"):
        WorldSize(cities=500)
    with pytest.raises(ValueError, match="seed"):
        make_world("1", WorldSize.tiny())
    with pytest.raises(ValueError, match="n_aux"):
        build_world_data(tmp_path, 0, WorldSize.tiny(), n_aux=-1)
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"id": "a", "question": "q?", "answers": ["x"]}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"q\.jsonl:2: malformed JSON"):
        load_questions(bad)
    bad.write_text(json.dumps({"id": "a", "title": "t"}) + "\n")
    with pytest.raises(ValueError, match="missing key"):
        list(iter_corpus(bad))
    with pytest.raises(FileNotFoundError):
        load_questions(tmp_path / "absent.jsonl")
