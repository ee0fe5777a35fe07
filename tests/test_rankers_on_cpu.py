"""The rankers on hand-built steps: every critic feature, random, oracle, llm-judge, TrajectoryRanker.

Steps and trajectories are built by hand from toy-world-style passages, so each test
states exactly what the agent had seen. The only fake is the scripted judge engine
of the llm-judge tests (a model's text); the tiny random model is real.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import prompts
from actors.engines.hf import HFEngine
from actors.rankers import Critic, LLMJudge, OracleRanker, RandomRanker, make_ranker
from actors.rankers.actor import TrajectoryRanker
from actors.rankers.base import StepContext, step_contexts
from actors.rankers.critic import WEIGHTS, entities, names, weighted
from actors.rankers.llm_judge import judge_prompt, verdict_counters
from agent.trajectory import Step, Trajectory
from core.config import EngineConfig, RankerConfig
from core.engine import Sample
from core.search import Snippet
from learner.selection import apply_scores, best_sample, tied
from toyworld.build import build_world_data, iter_corpus, load_questions
from toyworld.graph import WorldSize
from toyworld.modelzoo import ensure_random_model

QUESTION = "Where was the person who wrote The Sleeping Moon born?"
BOOK = Snippet(2, "book0021-0", "The Sleeping Moon",
               "The Sleeping Moon is a work of fiction. Lucy Gray is the author of The Sleeping Moon.")
GRAY = Snippet(4, "person0005-0", "Lucy Gray",
               "Lucy Gray was born in 1937. Gray was born and raised in Bolton.")
HILL = Snippet(5, "person0009-0", "Anna Hill", "Anna Hill was born in Dover. Hill studied at Lakeside College.")
OTHER = Snippet(6, "city0003-0", "Epsom", "Epsom is a city. Epsom lies in Tarvia and is located there.")
NOTE_BOOK = prompts.Note("The Sleeping Moon author", "Lucy Gray is the author of The Sleeping Moon. [link_id=2]")
NOTE_GRAY = prompts.Note("Lucy Gray born", "Gray was born and raised in Bolton. [link_id=4]")


def mk_step(kind: str, *texts: str, nlls: list[float] | None = None) -> Step:
    nlls = nlls or [1.0 + i for i in range(len(texts))]
    samples = [Sample(" " + t, n_tokens=4, sum_logprob=-4 * n) for t, n in zip(texts, nlls, strict=True)]
    return Step(kind=kind, prompt=f"{kind} prompt", samples=samples, parse_ok=[True] * len(texts))


def mk_ctx(notes=(), snippets=(), queries=(), answer=None, gold=None, question=QUESTION, index=0) -> StepContext:
    return StepContext("q1", question, index, list(notes), list(snippets), list(queries), gold, answer)


def feats(kind: str, ctx: StepContext, *texts: str) -> list[dict[str, float]]:
    return Critic().features(mk_step(kind, *texts), ctx)


# ------------------------------------------------------------ reading text


def test_entities_and_names():
    assert entities(QUESTION) == ["The Sleeping Moon"]
    assert entities("Born in Glenmore, David Steel grew up there.") == ["Glenmore", "David Steel"]
    assert entities("The capital of Galdor is Hythe. [link_id=3]") == ["Galdor", "Hythe"]
    assert entities("Today Fisher lives in Wells.") == ["Fisher", "Wells"]
    assert names("Gray was born and raised in Bolton.", "bolton")
    assert not names("Boltonville is far.", "Bolton")
    assert names("The Sleeping Moon, a novel", "Sleeping Moon") and not names("Moon Sleeping", "Sleeping Moon")


# ------------------------------------------------------------ critic: decision


def test_search_features_follow_the_question_then_the_latest_note():
    first = mk_ctx()
    good, unseen, partial = feats("decision", first, 'Search("The Sleeping Moon author")',
                                  'Search("Lucy Gray born")', 'Search("Sleeping Moon author")')
    assert good["query.names_known_entity"] == 1.0 and good["query.names_frontier_entity"] == 1.0
    assert good["query.novelty"] == 1.0 and good["query.repeats_past_query"] == 0.0
    assert unseen["query.names_known_entity"] == 0.0 and unseen["query.names_frontier_entity"] == 0.0
    assert unseen["query.names_no_known_entity"] == 1.0 and good["query.names_no_known_entity"] == 0.0
    assert partial["query.names_known_entity"] == 0.5
    assert weighted(good) > weighted(partial) > weighted(unseen)

    after = mk_ctx(notes=[NOTE_BOOK], snippets=[BOOK], queries=["The Sleeping Moon author"])
    hop2, again = feats("decision", after, 'Search("Lucy Gray born")', 'Search("The Sleeping Moon author")')
    assert hop2["query.names_frontier_entity"] == 1.0 and hop2["query.entity_already_noted"] == 0.0
    assert again["query.repeats_past_query"] == 1.0 and again["query.novelty"] == 0.0
    assert again["query.entity_already_noted"] == 1.0 and again["query.names_frontier_entity"] == 0.0
    assert Critic().score(mk_step("decision", 'Search("Lucy Gray born")', 'Search("The Sleeping Moon author")'),
                          after) == [weighted(hop2), weighted(again)]
    assert weighted(hop2) > weighted(again)


def test_novelty_is_graded_and_a_rephrase_after_nothing_found_is_not_penalised():
    nothing = mk_ctx(notes=[prompts.Note("The Sleeping Moon author", None)], queries=["The Sleeping Moon author"])
    rephrase, = feats("decision", nothing, 'Search("The Sleeping Moon")')
    assert 0.0 < rephrase["query.novelty"] < 1.0  # overlaps the past query without repeating it
    assert rephrase["query.repeats_past_query"] == 0.0 and rephrase["query.entity_already_noted"] == 0.0
    repeat, made_up = feats("decision", nothing, 'Search("The Sleeping Moon author")', 'Search("Anna Hill born")')
    assert repeat["query.repeats_past_query"] == 1.0 and made_up["query.novelty"] == 1.0
    assert weighted(rephrase) > weighted(repeat) > weighted(made_up)  # a repeat beats a made-up entity


def test_terminate_needs_a_candidate_answer_in_the_notes():
    none_yet, = feats("decision", mk_ctx(), "Terminate()")
    assert none_yet == {"parses": 1.0, "terminate.has_candidate": 0.0, "terminate.without_notes": 1.0}
    only_seen = mk_ctx(notes=[prompts.Note("The Sleeping Moon", "The Sleeping Moon is a work of fiction. [link_id=2]")],
                       queries=["The Sleeping Moon"])
    assert feats("decision", only_seen, "Terminate()")[0]["terminate.has_candidate"] == 0.0
    done = mk_ctx(notes=[NOTE_BOOK, NOTE_GRAY], queries=["The Sleeping Moon author", "Lucy Gray born"])
    (term,) = feats("decision", done, "Terminate()")
    assert term["terminate.has_candidate"] == 1.0 and term["terminate.without_notes"] == 0.0
    assert weighted(term) > weighted(none_yet)


# ------------------------------------------------------------ critic: summarize


def summarize_ctx(snippets=(GRAY, HILL, OTHER)) -> StepContext:
    return mk_ctx(notes=[NOTE_BOOK], snippets=snippets, queries=["The Sleeping Moon author", "Lucy Gray born"])


def test_summary_copied_beats_restated_beats_wrong_snippet_beats_none_beats_made_up():
    copy, full, para, wrong, fragment, made_up = feats(
        "summarize", summarize_ctx(),
        '"Gray was born and raised in Bolton. [link_id=4]"',
        '"Lucy Gray was born in 1937. [link_id=4]"',
        '"Lucy Gray comes from Bolton. [link_id=4]"',  # the snippet's fact in other words
        '"Anna Hill was born in Dover. [link_id=5]"',
        '"Lucy Gray. [link_id=4]"',
        '"Lucy Gray comes from Dover. [link_id=4]"',  # Dover is in no cited snippet: made up
    )
    assert copy["summary.copied"] == 1.0 and copy["summary.ungrounded"] == 0.0
    assert para["summary.copied"] == 0.0 and para["summary.grounded"] == 1.0 and para["summary.ungrounded"] == 0.0
    assert fragment["summary.ungrounded"] == 1.0  # a bare name is not a fact
    assert made_up["summary.grounded"] == 0.0 and made_up["summary.ungrounded"] == 1.0
    assert copy["summary.names_query_entity"] == 0.5 and full["summary.names_query_entity"] == 1.0
    assert para["summary.names_query_entity"] == 1.0 and made_up["summary.names_query_entity"] == 0.0
    assert copy["summary.cites_entity_snippet"] == 1.0 and wrong["summary.cites_entity_snippet"] == 0.0
    assert wrong["summary.off_entity"] == 1.0 and copy["summary.off_entity"] == 0.0
    assert copy["summary.names_new_entity"] == 1.0 and full["summary.names_new_entity"] == 0.0  # Bolton is new
    assert copy["summary.query_terms"] == 1.0  # "born"
    (none,) = feats("summarize", summarize_ctx(), "None")
    # a restatement is worth having: trained on None instead, a policy learns to note nothing (README 'What mattered')
    assert weighted(copy) > weighted(full) > weighted(para) > weighted(wrong) > weighted(none) > weighted(made_up)
    assert weighted(fragment) < weighted(none)


def test_summary_none_is_right_when_no_snippet_names_the_entity_or_the_search_was_off_track():
    missed, = feats("summarize", summarize_ctx(), "None")
    assert missed == {"parses": 1.0, "summary.none_justified": 0.0, "summary.none_despite_match": 1.0}
    ctx = summarize_ctx(snippets=(HILL, OTHER))
    justified, wrong = feats("summarize", ctx, "None", '"Anna Hill was born in Dover. [link_id=5]"')
    assert justified["summary.none_justified"] == 1.0
    assert weighted(justified) > weighted(wrong)
    copy, none = Critic().score(mk_step("summarize", '"Gray was born and raised in Bolton. [link_id=4]"', "None"),
                                summarize_ctx())
    assert copy > none
    # a search for an entity the question and notes never named: its facts are off the question
    off = mk_ctx(notes=[NOTE_BOOK], snippets=[HILL], queries=["The Sleeping Moon author", "Anna Hill born"])
    none, fact = feats("summarize", off, "None", '"Anna Hill was born in Dover. [link_id=5]"')
    assert none["summary.none_justified"] == 1.0 and fact["summary.off_question"] == 1.0
    assert "summary.off_entity" not in fact and weighted(none) > weighted(fact)


def test_summary_citing_a_snippet_not_shown_does_not_parse():
    bad, good = feats("summarize", summarize_ctx(), '"Lucy Gray is the author. [link_id=2]"',
                      '"Gray was born and raised in Bolton. [link_id=4]"')
    assert bad == {"unparseable": 1.0} and good["parses"] == 1.0
    assert weighted(bad) < weighted(good)


# ------------------------------------------------------------ critic: answer and checks


def answer_ctx(answer=None) -> StepContext:
    return mk_ctx(notes=[NOTE_BOOK, NOTE_GRAY], snippets=[BOOK, GRAY],
                  queries=["The Sleeping Moon author", "Lucy Gray born"], answer=answer)


def test_answer_from_the_latest_note_beats_searched_and_question_entities():
    right, searched, asked, ungrounded, wrong_cite = feats(
        "answer", answer_ctx(), '"Bolton [link_id=4]"', '"Lucy Gray [link_id=2]"', '"The Sleeping Moon [link_id=2]"',
        '"Paris [link_id=4]"', '"Bolton [link_id=2]"')
    assert right == {"parses": 1.0, "answer.grounded": 1.0, "answer.in_latest_note": 1.0, "answer.cited_support": 1.0,
                     "answer.is_question_entity": 0.0, "answer.is_searched_entity": 0.0, "answer.short": 1.0}
    assert searched["answer.is_searched_entity"] == 1.0 and searched["answer.in_latest_note"] == 0.0
    assert asked["answer.is_question_entity"] == 1.0
    assert ungrounded["answer.grounded"] == 0.0 and ungrounded["answer.cited_support"] == 0.0
    assert wrong_cite["answer.cited_support"] == 0.0 and wrong_cite["answer.grounded"] == 1.0
    scores = [weighted(f) for f in (right, wrong_cite, searched, ungrounded)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4
    assert weighted(asked) < weighted(searched)


@pytest.mark.parametrize("kind", ["relevance", "grounding"])
def test_checks_keep_a_grounded_answer_and_revise_only_to_a_grounded_one(kind):
    keep, worse, same = Critic().score(
        mk_step(kind, "Keep()", 'Revise("Lucy Gray [link_id=2]")', 'Revise("Bolton [link_id=4]")'),
        answer_ctx("Bolton [link_id=4]"))
    assert keep > same > worse  # Keep wins the tie with a revision to the same answer
    keep, better, ungrounded = Critic().score(
        mk_step(kind, "Keep()", 'Revise("Bolton [link_id=4]")', 'Revise("Paris [link_id=4]")'),
        answer_ctx("Lucy Gray [link_id=2]"))
    assert better > keep and better > ungrounded
    (revised,) = Critic().features(mk_step(kind, 'Revise("Paris [link_id=4]")'), answer_ctx("Lucy Gray [link_id=2]"))
    assert revised["check.revise_ungrounded"] == 1.0
    (f,) = Critic().features(mk_step(kind, "Keep()"), answer_ctx("Bolton [link_id=4]"))
    assert f["check.keep"] == 1.0 and f["answer.grounded"] == 1.0


def test_critic_refuses_gold_and_unparseable_samples_score_lowest():
    with pytest.raises(ValueError, match="label-free"):
        Critic().score(mk_step("decision", "Terminate()"), mk_ctx(gold={"answers": ["Bolton"]}))
    scores = Critic().score(mk_step("decision", "Search(oops", 'Search("Lucy Gray born")', "Terminate()"), mk_ctx())
    assert scores[0] == WEIGHTS["unparseable"] and scores[0] < min(scores[1:])


def test_every_emitted_feature_has_a_weight():
    seen = set()
    for kind, ctx, texts in [
        ("decision", answer_ctx(), ['Search("Lucy Gray born")', "Terminate()", "junk"]),
        ("summarize", summarize_ctx(), ['"Gray was born and raised in Bolton. [link_id=4]"', "None"]),
        ("answer", answer_ctx(), ['"Bolton [link_id=4]"']),
        ("grounding", answer_ctx("Bolton [link_id=4]"), ["Keep()", 'Revise("Bolton [link_id=4]")']),
    ]:
        for f in feats(kind, ctx, *texts):
            seen |= set(f)
    assert seen <= set(WEIGHTS)
    assert len(seen) >= len(WEIGHTS) - 4  # nearly the whole table is exercised by these four steps


# ------------------------------------------------------------ random


def test_random_ranker_is_deterministic_per_seed_question_and_step():
    step = mk_step("decision", "Terminate()", "Terminate()", "Terminate()")
    a = RandomRanker(3).score(step, mk_ctx(index=5))
    assert a == RandomRanker(3).score(step, mk_ctx(index=5))
    assert a != RandomRanker(4).score(step, mk_ctx(index=5))
    assert a != RandomRanker(3).score(step, mk_ctx(index=6))
    assert len(a) == 3 and all(0.0 <= x < 1.0 for x in a)
    with pytest.raises(ValueError, match="seed"):
        RandomRanker("x")  # type: ignore[arg-type]


# ------------------------------------------------------------ oracle on a tiny world


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build_world_data(out, 0, WorldSize.tiny(), n_aux=0)
    records = load_questions(out / "questions" / "train.jsonl")
    passages = {p["id"]: p for p in iter_corpus(out / "corpus.jsonl.gz")}
    return records, passages


def test_oracle_follows_the_gold_chain(tiny_world):
    records, passages = tiny_world
    rec = next(r for r in records if r["template"] != "older_company_founder" and len(r["hops"]) == 2)
    hop0, hop1 = rec["hops"]
    obj0 = rec["gold_facts"][0][2]
    gold_p = passages[hop0["passage_id"]]
    shown = [Snippet(1, gold_p["id"], gold_p["title"], gold_p["text"])]
    sentence = next(s for s in gold_p["text"].split(". ") if obj0 in s).rstrip(".") + "."
    oracle = OracleRanker()

    d = oracle.score(mk_step("decision", f'Search("{hop0["query"]}")', f'Search("{hop0["entity"]}")',
                             f'Search("{hop1["query"]}")', "Terminate()", "junk"), mk_ctx(gold=rec))
    assert d[0] == 3.0 and d[1] == 2.0 and d[2] < d[1] and d[3] == 0.0 and d[4] == 0.0

    ctx = mk_ctx(snippets=shown, queries=[hop0["query"]], gold=rec)
    s = oracle.score(mk_step("summarize", f'"{sentence} [link_id=1]"', "None"), ctx)
    assert s == [3.0, 0.0]

    noted = [prompts.Note(hop0["query"], f"{sentence} [link_id=1]"), prompts.Note(hop1["query"], None)]
    after = mk_ctx(notes=noted, snippets=shown, queries=[hop0["query"], hop1["query"]], gold=rec)
    d2 = oracle.score(mk_step("decision", f'Search("{hop1["query"]}")', f'Search("{hop0["query"]}")'), after)
    assert d2[0] == 3.0 and d2[1] == 0.0

    answer = rec["answers"][0]
    a = oracle.score(mk_step("answer", f'"{answer} [link_id=1]"', f'"{answer.lower()}! [link_id=1]"',
                             f'"{hop0["entity"]} [link_id=1]"'), mk_ctx(snippets=shown, gold=rec))
    assert a == [3.0, 3.0, 0.0]
    with pytest.raises(ValueError, match="gold"):
        oracle.score(mk_step("answer", '"x [link_id=1]"'), mk_ctx(snippets=shown))


# ------------------------------------------------------------ llm-judge


class ScriptedJudge:
    """A judge engine whose text comes from a script (the one fake: a model's text)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls: list[dict] = []
        self.version = 0

    def generate(self, prompts_, n, temperature, max_new_tokens, stop=None, seed=None):
        self.calls.append({"prompts": list(prompts_), "n": n, "temperature": temperature, "stop": stop})
        out = []
        for _ in prompts_:
            reply = self.replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            out.append([Sample(reply, 10, -3.0)])
        return out

    def load_weights(self, state, version):
        raise NotImplementedError


def test_llm_judge_scores_by_position_in_the_parsed_ranking():
    engine = ScriptedJudge([prompts.format_ranking("3 names the entity", 2, [2, 0, 1])])
    judge = LLMJudge(engine, max_new_tokens=50)
    step = mk_step("decision", 'Search("a")', 'Search("b")', 'Search("c")')
    shown = judge.order(step)  # the judge sees the samples in this order
    expected = [0.0] * 3
    for position, candidate in enumerate([2, 0, 1]):  # the verdict numbers the candidates as shown
        expected[shown[candidate]] = float(3 - position)
    assert judge.score(step, mk_ctx()) == expected
    (call,) = engine.calls
    assert call["prompts"] == [prompts.ranker_prompt(step.prompt, [step.samples[i].text for i in shown])]
    assert call["n"] == 1 and call["temperature"] == 0.0 and call["stop"] == prompts.RANKER_STOP
    assert judge.stats()["judged"] == 1


def test_llm_judge_shuffles_the_candidates_it_shows():
    """A judge that always prefers the first candidate shown (position bias) must not always pick sample 0."""
    steps = [mk_step("decision", *(f'Search("{w}{i}")' for w in "abcd")) for i in range(40)]
    first_wins = prompts.format_ranking("first", 0, [0, 1, 2, 3])
    judge = LLMJudge(ScriptedJudge([first_wins] * 40), seed=3)
    picks = [scores.index(4.0) for scores in judge.score_batch([(s, mk_ctx()) for s in steps])]
    assert set(picks) == {0, 1, 2, 3} and max(picks.count(i) for i in range(4)) < 20
    orders = [judge.order(s) for s in steps]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert orders == [LLMJudge(ScriptedJudge([]), seed=3).order(s) for s in steps]  # deterministic per seed
    assert orders != [LLMJudge(ScriptedJudge([]), seed=4).order(s) for s in steps]


def test_llm_judge_talks_in_the_chat_template_of_its_model(tmp_path):
    """A judge model with a chat template gets each prompt as a user turn (bos left to the engine);
    one without gets the raw prompt."""
    from transformers import AutoTokenizer

    from actors.engines import chat_format

    d = tmp_path / "model"
    ensure_random_model(d, "tiny", ["x y z"] * 20, seed=0)
    assert chat_format(AutoTokenizer.from_pretrained(d))("rank these") == "rank these"  # no template: raw
    assert chat_format(None)("rank these") == "rank these"  # an engine without a tokenizer
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    (d / "chat_template.jinja").unlink(missing_ok=True)
    render = chat_format(AutoTokenizer.from_pretrained(d))
    assert render("rank these") == "<|user|>rank these\n<|assistant|>"
    engine = ScriptedJudge([prompts.format_ranking("e", 0, [0, 1])])
    judge = LLMJudge(engine, chat=render)
    step = mk_step("answer", '"a"', '"b"')
    judge.score(step, mk_ctx())
    assert engine.calls[0]["prompts"] == [render(judge_prompt(step, judge.order(step)))]
    # make_ranker talks to an engine in the template of the tokenizer that engine loaded
    engine = ScriptedJudge([prompts.format_ranking("e", 0, [0, 1])])
    engine.tokenizer = AutoTokenizer.from_pretrained(d)
    wired = make_ranker(RankerConfig(kind="llm-judge"), engine=engine)
    wired.score(step, mk_ctx())
    assert engine.calls[0]["prompts"] == [render(judge_prompt(step, wired.order(step)))]


def test_judge_engine_takes_the_run_engine_settings():
    engine = EngineConfig(backend="hf", model="policy", dtype="bfloat16", max_batch=7, gpu_memory_utilization=0.4,
                          enforce_eager=False, random_init="tiny")
    ranker = RankerConfig(kind="llm-judge", judge_model="org/judge", judge_backend="vllm")
    got = engine.serving(ranker.judge_model, ranker.judge_backend)
    assert (got.backend, got.model, got.dtype, got.max_batch, got.gpu_memory_utilization, got.enforce_eager,
            got.random_init) == ("vllm", "org/judge", "bfloat16", 7, 0.4, False, "")


def test_verdict_counters_fail_above_the_configured_rate():
    stats = {"judged": 7, "identical": 5, "fallback_unparseable": 2, "fallback_engine": 1, "last_unparsed": "Best: 9"}
    counters, error = verdict_counters(stats, 0.2)
    assert counters == {"verdicts_needed": 10, "verdicts_unparsed": 2, "verdicts_engine_failed": 1,
                        "unparsed_rate": 0.3}
    assert error.startswith("the llm-judge ranker gave no usable verdict on 3 of 10 steps (30.0% > ")
    assert "'Best: 9'" in error and "\n" not in error
    assert verdict_counters(stats, 0.3)[1] is None
    assert verdict_counters({}, 0.0) == ({"verdicts_needed": 0, "verdicts_unparsed": 0,
                                          "verdicts_engine_failed": 0, "unparsed_rate": 0.0}, None)


def test_tied_steps_are_those_left_to_perplexity():
    step = mk_step("answer", '"a"', '"b"', '"a"')
    assert tied(step, [1.0, 1.0, 1.0]) is True and tied(step, [1.0, 2.0, 1.0]) is False
    assert tied(mk_step("answer", '"a"', '"a"'), [0.0, 0.0]) is None  # nothing to rank


def test_llm_judge_falls_back_to_equal_scores_and_counts():
    # the batch call fails on its second prompt -> each prompt is retried alone:
    # the first gets an unparseable verdict, the second fails again
    engine = ScriptedJudge([prompts.format_ranking("x", 0, [0, 1]), RuntimeError("batch failed"),
                            "Explanation: fine\nBest: 9\nRanking: 9 > 1", RuntimeError("too long alone")])
    judge = LLMJudge(engine)
    items = [(mk_step("answer", '"a"', '"b"'), mk_ctx()), (mk_step("answer", '"c"', '"d"'), mk_ctx()),
             (mk_step("answer", '"e"', '"e"'), mk_ctx())]
    scores = judge.score_batch(items)
    assert scores == [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    assert judge.stats() == {"judged": 0, "identical": 1, "fallback_unparseable": 1, "fallback_engine": 1,
                             "last_unparsed": "Explanation: fine\nBest: 9\nRanking: 9 > 1"}
    assert len(engine.calls) == 3  # one batch call, then one retry per prompt; identical samples: no call


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("judge") / "model"
    texts = [prompts.ranker_prompt("QUESTION = x", ["a", "b"]), prompts.format_ranking("e", 0, [0, 1])] * 20
    ensure_random_model(d, "tiny", texts, seed=0)
    return HFEngine(d, max_batch=8)


def test_llm_judge_with_a_tiny_random_model_falls_back(tiny_engine):
    judge = make_ranker(RankerConfig(kind="llm-judge", judge_max_new_tokens=12), engine=tiny_engine)
    steps = [(mk_step("decision", 'Search("a")', "Terminate()"), mk_ctx()),
             (mk_step("answer", '"x"', '"y"', '"z"'), mk_ctx())]
    assert judge.score_batch(steps) == [[0.0, 0.0], [0.0, 0.0, 0.0]]
    assert judge.stats()["fallback_unparseable"] == 2 and judge.stats()["judged"] == 0
    worker = TrajectoryRanker(RankerConfig(kind="llm-judge"), engine=tiny_engine)
    (out,) = ranked(worker, [trajectory().to_dict()])
    taken = worker.take_stats()  # one phase's counters, then counting starts again
    assert taken["fallback_unparseable"] >= 1 and taken["judged"] == 0 and taken["last_unparsed"]
    again = worker.take_stats()  # a phase with no verdicts: no unparsed text of the last one
    assert again["fallback_unparseable"] == 0 and "last_unparsed" not in again
    assert worker.stats()["fallback_unparseable"] >= 1 and worker.stats()["last_unparsed"]
    llm = [s for s in out["steps"] if s["scores"] is not None]
    # equal scores everywhere: the best is the parseable sample with the lowest NLL
    for s in llm:
        nll = [-x["sum_logprob"] / x["n_tokens"] for x in s["samples"]]
        ok = [i for i, p in enumerate(s["parse_ok"]) if p]
        assert s["ranker_best"] == min(ok, key=lambda i: (nll[i], i))


# ------------------------------------------------------------ step contexts and the worker


def ranked(worker: TrajectoryRanker, trajectories: list[dict]) -> list[dict]:
    """What the rank phase makes of the worker's scores: each LLM step with its scores and best sample."""
    scores = worker.rank(trajectories)
    out = []
    for d in trajectories:
        traj = Trajectory.from_dict(d)
        for index, step in enumerate(traj.steps):
            if (traj.id, index) in scores:
                apply_scores(step, scores[(traj.id, index)])
        out.append(traj.to_dict())
    return out


def trajectory() -> Trajectory:
    """A whole answered episode of two searches, with K=2 or 3 samples per LLM step."""
    def llm(kind, texts, chosen, ok=None, nlls=None):
        s = mk_step(kind, *texts, nlls=nlls)
        s.parse_ok = ok or [True] * len(texts)
        s.chosen = chosen
        s.output = texts[chosen]
        return s

    steps = [
        llm("decision", ['Search("The Sleeping Moon author")', "Search(oops", "Terminate()"], 0, [True, False, True]),
        Step("search", query="The Sleeping Moon author", snippets=[Snippet(1, BOOK.doc_id, BOOK.title, BOOK.text)]),
        llm("summarize", ['"Lucy Gray is the author of The Sleeping Moon. [link_id=1]"', "None"], 0),
        llm("decision", ['Search("Lucy Gray born")', 'Search("Lucy Gray born")'], 1, nlls=[2.0, 1.0]),
        Step("search", query="Lucy Gray born", snippets=[Snippet(4, GRAY.doc_id, GRAY.title, GRAY.text)]),
        llm("summarize", ['"Gray was born and raised in Bolton. [link_id=4]"', "None"], 0),
        llm("decision", ["Terminate()", 'Search("Bolton")'], 0),
        llm("answer", ['"Lucy Gray [link_id=1]"', '"Bolton [link_id=4]"'], 0),
        llm("relevance", ["Keep()", 'Revise("Bolton [link_id=4]")'], 1),
        llm("grounding", ["Keep()", 'Revise("Lucy Gray [link_id=1]")'], 0),
        Step("final", output="Bolton"),
    ]
    return Trajectory("q1#0", "q1", QUESTION, steps=steps, answer="Bolton", end_reason="answered", searches_used=2)


def test_step_contexts_rebuild_what_the_agent_had_seen():
    pairs = step_contexts(trajectory())
    assert [s.kind for s, _ in pairs] == ["decision", "summarize", "decision", "summarize", "decision", "answer",
                                         "relevance", "grounding"]
    _, summ2 = pairs[3]
    assert [s.link_id for s in summ2.snippets] == [4] and summ2.past_queries[-1] == "Lucy Gray born"
    assert summ2.step_index == 5 and summ2.gold is None
    _, ans = pairs[5]
    assert [n.query for n in ans.notes] == ["The Sleeping Moon author", "Lucy Gray born"]
    assert [s.link_id for s in ans.snippets] == [1, 4] and ans.answer is None
    assert pairs[6][1].answer == "Lucy Gray [link_id=1]"
    assert pairs[7][1].answer == "Bolton [link_id=4]"  # relevance revised it


def test_worker_fills_every_llm_step_and_leaves_the_rest_alone():
    before = trajectory().to_dict()
    worker = TrajectoryRanker(RankerConfig(kind="critic"))
    scores = worker.rank([json.loads(json.dumps(before))])
    llm_steps = [i for i, s in enumerate(before["steps"]) if s["kind"] not in ("search", "final")]
    assert sorted(scores) == [("q1#0", i) for i in llm_steps]  # one list per LLM step, nothing else
    (after,) = ranked(worker, [json.loads(json.dumps(before))])
    for b, a in zip(before["steps"], after["steps"], strict=True):
        if b["kind"] in ("search", "final"):
            assert a == b
            continue
        assert len(a["scores"]) == len(a["samples"]) and a["ranker_best"] is not None
        assert {k: v for k, v in a.items() if k not in ("scores", "ranker_best")} == \
            {k: v for k, v in b.items() if k not in ("scores", "ranker_best")}
        bad = [i for i, ok in enumerate(a["parse_ok"]) if not ok]
        assert all(a["scores"][i] < min(a["scores"][j] for j in range(len(a["scores"])) if j not in bad) for i in bad)
        assert a["ranker_best"] not in bad
    llm = [s for s in after["steps"] if s["scores"] is not None]
    assert llm[2]["ranker_best"] == 1  # identical samples: the lower NLL wins the tie
    assert llm[5]["ranker_best"] == 1  # the answer from the latest note, not the searched entity
    assert llm[6]["ranker_best"] == 1  # revise to the grounded answer
    stats = worker.stats()
    assert stats["steps"] == 16 and stats["trajectories"] == 2  # two calls of one trajectory
    assert 0 < sum(s["ranker_best"] == s["chosen"] for s in llm) < 8


def test_worker_never_passes_gold_to_a_label_free_ranker():
    gold = {"q1": {"answers": ["Bolton"], "hops": [], "gold_facts": []}}
    (out,) = ranked(TrajectoryRanker(RankerConfig(kind="critic"), gold=gold), [trajectory().to_dict()])  # would raise
    assert all(s["scores"] is not None for s in out["steps"] if s["kind"] not in ("search", "final"))
    with pytest.raises(ValueError, match="gold"):
        TrajectoryRanker(RankerConfig(kind="oracle"))
    with pytest.raises(KeyError, match="q1"):
        TrajectoryRanker(RankerConfig(kind="oracle"), gold={"other": {}}).rank([trajectory().to_dict()])


def test_worker_random_ranks_are_independent_of_batching():
    worker = TrajectoryRanker(RankerConfig(kind="random", seed=7))
    t = trajectory().to_dict()
    t2 = dataclasses.replace(trajectory(), id="q2#0", question_id="q2").to_dict()
    alone = worker.rank([t])
    together = worker.rank([t2, t])
    assert {k: v for k, v in together.items() if k[0] == "q1#0"} == alone


def test_best_sample_ties_and_bad_input():
    step = mk_step("decision", "Terminate()", "Terminate()", "Terminate()", nlls=[2.0, 1.0, 1.0])
    assert best_sample(step, [1.0, 1.0, 1.0]) == 1
    assert best_sample(step, [1.0, 1.0, 1.0], [True, False, True]) == 2
    assert best_sample(step, [5.0, 1.0, 1.0], [False, False, False]) is None
    with pytest.raises(ValueError, match="scores"):
        best_sample(step, [1.0])
