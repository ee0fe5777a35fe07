"""The agent's state machine and the batched episode runner, on CPU.

The model's text is the only fake: ``ScriptedEngine`` implements the Engine protocol
and answers each prompt from a script chosen by the prompt's step kind (read off the
live block that ends every prompt), with scripted log-probabilities. Search is the
real BM25 backend over a small corpus written here; the real prompts and parsers
are used throughout.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence

import pytest

from actors.search.bm25 import BM25Search
from agent.episode import lowest_nll_parseable
from agent.runner import EpisodeRunner
from agent.trace import format_trajectory
from agent.trajectory import Question, Step, Trajectory
from core.config import AgentConfig
from core.engine import Sample
from core.search import SearchError
from core.seeds import wave_seed

# ------------------------------------------------------------ a tiny world

CORPUS = [
    ("p1", "Mara Quill", "Mara Quill founded Brightwater Press in 1921 in the harbour city of Olvenport."),
    ("p2", "Brightwater Press", "Brightwater Press is a publisher in Olvenport. It published The Salt Orchard."),
    ("p3", "The Salt Orchard", "The Salt Orchard is a novel by Tomas Wren, published by Brightwater Press."),
    ("p4", "Olvenport", "Olvenport is a harbour city on the river Dask, home of Brightwater Press."),
    ("p5", "Tomas Wren", "Tomas Wren is a novelist born in Kellmouth who wrote The Salt Orchard."),
    ("p6", "Kellmouth", "Kellmouth is a fishing town north of Olvenport."),
    ("p7", "Brightwater Books", "Brightwater Books is a shop in Olvenport founded by Ida Quill."),
    ("p8", "Dask", "The Dask is a river that flows through Olvenport and Kellmouth."),
]

SALT = Question("q-salt", "Who founded the company that published The Salt Orchard?", ("Mara Quill",))
WREN = Question("q-wren", "Where was the author of The Salt Orchard born?", ("Kellmouth",))
DASK = Question("q-dask", "Which river flows through Olvenport?", ("Dask",))

PLANS = {
    SALT.question: ["The Salt Orchard publisher", "Brightwater Press founder"],
    WREN.question: ["The Salt Orchard author", "Tomas Wren birthplace"],
    DASK.question: ["Olvenport river"],
}
ANSWERS = {SALT.question: "Mara Quill", WREN.question: "Kellmouth", DASK.question: "Dask"}


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "title": t, "text": x}) + "\n" for i, t, x in CORPUS))
    return path


@pytest.fixture(scope="module")
def bm25(corpus_path, tmp_path_factory):
    return BM25Search(corpus_path, cache_dir=tmp_path_factory.mktemp("bm25cache"))


class CountingBM25(BM25Search):
    """The real BM25 backend, counting calls; a query containing ``explode`` fails.

    Failure injection on the real backend (not a fake of its results): it is the
    only way to make a local index fail on demand.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[list[str]] = []

    def search(self, queries, topk):
        self.calls.append(list(queries))
        if any("explode" in q for q in queries):
            raise SearchError("index unavailable\n(injected)")
        return super().search(queries, topk)


@pytest.fixture
def counting_bm25(corpus_path, tmp_path):
    return CountingBM25(corpus_path, cache_dir=tmp_path / "bm25")


# ------------------------------------------------------------ the scripted model

Script = list[tuple[str, float]]  # (completion, mean NLL per token)
Responder = Callable[[str], Script]  # live block -> samples


def live_block(prompt: str) -> str:
    """The live case every prompt ends with (exemplars come before it)."""
    return prompt[prompt.rindex("QUESTION = ") :].rstrip()


def step_kind(prompt: str) -> str:
    live = live_block(prompt)
    for end, kind in (("ACTION_SELECTED =", "decision"), ("SUMMARY =", "summarize"), ("ANSWER =", "answer")):
        if live.endswith(end):
            return kind
    if live.endswith("VERDICT ="):
        return "grounding" if "NOTES =" in live else "relevance"
    raise AssertionError(f"unrecognised prompt ending: {live[-80:]!r}")


def live_question(live: str) -> str:
    m = re.match(r'QUESTION = "((?:[^"\\]|\\.)*)"', live)
    assert m, live[:100]
    return m.group(1).replace('\\"', '"').replace("\\\\", "\\")


def cited_ids(live: str) -> list[int]:
    return [int(x) for x in re.findall(r"link_id=(\d+)", live)]


def good_decision(live: str) -> Script:
    plan = PLANS.get(live_question(live), [])
    done = live.count("Action(query=")
    return [(f'Search("{plan[done]}")', 0.2)] if done < len(plan) else [("Terminate()", 0.2)]


def good_summary(live: str) -> Script:
    ids = cited_ids(live)
    if not ids:
        return [("None", 0.2)]
    title = re.search(r'title="([^"]*)"', live).group(1)
    return [(f'"{title} is relevant [link_id={ids[0]}]"', 0.2)]


def good_answer(live: str) -> Script:
    answer = ANSWERS.get(live_question(live), "unknown")
    ids = cited_ids(live)
    return [(f'"{answer} [link_id={ids[-1]}]"' if ids else f'"{answer}"', 0.2)]


def keep(live: str) -> Script:
    return [("Keep()", 0.2)]


GOOD: dict[str, Responder] = {
    "decision": good_decision,
    "summarize": good_summary,
    "answer": good_answer,
    "relevance": keep,
    "grounding": keep,
}


class ScriptedEngine:
    """Engine protocol with scripted text: per step kind, a responder gives (text, mean NLL) pairs.

    The script is cycled to ``n`` samples; each later copy gets a slightly higher NLL so
    the scripted order is also the likelihood order unless a test says otherwise.
    ``fail_on_calls`` makes the listed calls (0-based) raise.
    """

    def __init__(self, overrides: dict[str, Responder] | None = None, fail_on_calls: Sequence[int] = ()):
        self.responders = {**GOOD, **(overrides or {})}
        self.fail_on_calls = set(fail_on_calls)
        self.calls: list[dict] = []
        self.version = 0

    def generate(self, prompts, n, temperature, max_new_tokens, stop=None, seed=None):
        self.calls.append({"prompts": list(prompts), "n": n, "seed": seed, "stop": stop,
                           "kinds": [step_kind(p) for p in prompts]})
        if len(self.calls) - 1 in self.fail_on_calls:
            raise RuntimeError("CUDA out of memory\nwhile sampling")
        out = []
        for prompt in prompts:
            script = self.responders[step_kind(prompt)](live_block(prompt))
            samples = []
            for i in range(n):
                text, nll = script[i % len(script)]
                nll += 0.01 * (i // len(script))
                for s in stop or ():
                    text = text.split(s, 1)[0]
                n_tok = len(text.split()) + 1
                samples.append(Sample(text=" " + text, n_tokens=n_tok, sum_logprob=-nll * n_tok))
            out.append(samples)
        return out

    def load_weights(self, state, version):
        self.version = version


def cfg(**kw) -> AgentConfig:
    base = dict(search_budget=10, topk=3, k_samples=4, temperature=0.5, prompt_style="fewshot",
                self_checks=True, max_new_tokens=64, max_episodes_in_flight=8, seed=0)
    return AgentConfig(**{**base, **kw})


def kinds(traj: Trajectory) -> list[str]:
    return [s.kind for s in traj.steps]


def run_one(engine, search, q=SALT, **kw) -> Trajectory:
    (traj,) = EpisodeRunner(engine, search, cfg(**kw)).run([q])
    return traj


# ------------------------------------------------------------ the state machine


def test_full_episode_follows_the_plan_and_cites_global_link_ids(bm25):
    traj = run_one(ScriptedEngine(), bm25)
    assert traj.end_reason == "answered"
    assert kinds(traj) == ["decision", "search", "summarize"] * 2 + [
        "decision", "answer", "relevance", "grounding", "final"]
    searches = [s for s in traj.steps if s.kind == "search"]
    assert [s.query for s in searches] == PLANS[SALT.question]
    assert [s.link_id for s in searches[0].snippets] == [1, 2, 3]
    assert [s.link_id for s in searches[1].snippets] == [4, 5, 6]
    assert {s.doc_id for s in searches[0].snippets} <= {p[0] for p in CORPUS}
    assert traj.answer == "Mara Quill" and traj.searches_used == 2
    assert traj.steps[-1].output == "Mara Quill"
    answer_step = next(s for s in traj.steps if s.kind == "answer")
    assert answer_step.output.startswith("Mara Quill [link_id=")
    assert all(s.chosen == 0 and s.parse_ok == [True] * 4 for s in traj.llm_steps())
    summary = traj.steps[2]
    assert summary.output.endswith("[link_id=1]") and summary.prompt and "SUMMARY =" in summary.prompt


def test_budget_exhausted_keeps_searching_then_answers(bm25):
    def always_search(live: str) -> Script:
        return [('Search("Olvenport harbour city")', 0.1)]

    traj = run_one(ScriptedEngine({"decision": always_search}), bm25, search_budget=3)
    assert traj.end_reason == "answered" and traj.searches_used == 3
    assert kinds(traj)[:9] == ["decision", "search", "summarize"] * 3
    assert kinds(traj)[9:] == ["answer", "relevance", "grounding", "final"]  # no 4th decision
    remaining = [int(re.search(r"REMAINING_SEARCHES = (\d+)", live_block(s.prompt)).group(1))
                 for s in traj.steps if s.kind == "decision"]
    assert remaining == [3, 2, 1]
    firsts = [s.snippets[0].link_id for s in traj.steps if s.kind == "search"]
    assert firsts == [1, 4, 7]


def test_short_and_empty_results_keep_link_id_blocks_and_summaries_may_be_none(bm25):
    plans = ["Ida", "zzzz unknownword", "Kellmouth fishing town"]

    def decision(live: str) -> Script:
        done = live.count("Action(query=")
        return [(f'Search("{plans[done]}")', 0.2)] if done < len(plans) else [("Terminate()", 0.2)]

    traj = run_one(ScriptedEngine({"decision": decision}), bm25)
    searches = [s for s in traj.steps if s.kind == "search"]
    assert [[x.link_id for x in s.snippets] for s in searches] == [[1], [], [7, 8, 9]]
    assert searches[0].snippets[0].doc_id == "p7"
    summaries = [s.output for s in traj.steps if s.kind == "summarize"]
    assert summaries == ["Brightwater Books is relevant [link_id=1]", "None",
                         "Kellmouth is relevant [link_id=7]"]
    answer_prompt = next(s.prompt for s in traj.steps if s.kind == "answer")
    assert "summary=None" in live_block(answer_prompt)
    assert traj.answer == "Mara Quill" and traj.searches_used == 3


def test_zero_budget_skips_the_decision(bm25):
    traj = run_one(ScriptedEngine(), bm25, search_budget=0)
    assert kinds(traj) == ["answer", "relevance", "grounding", "final"]
    assert traj.answer == "Mara Quill"


def test_terminate_at_once_answers_without_notes_or_citations(bm25):
    traj = run_one(ScriptedEngine({"decision": lambda live: [("Terminate()", 0.1)]}), bm25)
    assert kinds(traj) == ["decision", "answer", "relevance", "grounding", "final"]
    assert traj.steps[0].output == "Terminate()"
    assert traj.answer == "Mara Quill" and traj.steps[1].output == "Mara Quill"
    assert traj.searches_used == 0


def test_closed_book_starts_at_the_answer():
    traj = run_one(ScriptedEngine(), None)
    assert kinds(traj) == ["answer", "relevance", "grounding", "final"]
    assert traj.end_reason == "answered" and traj.answer == "Mara Quill"


def test_closed_book_reads_an_answer_that_cites_anyway(bm25):
    # a model trained to always cite: closed book its citations are dropped, not fatal;
    # with search the same unshown citation still makes the step unparseable
    cite = {"answer": lambda live: [('"Mara Quill [link_id=3]"', 0.1)],
            "relevance": lambda live: [('Revise("Ida Quill [link_id=2]")', 0.1)]}
    traj = run_one(ScriptedEngine(cite), None)
    assert traj.end_reason == "answered" and traj.answer == "Ida Quill"
    assert [s.samples[0].text.strip() for s in traj.steps[:2]] == ['"Mara Quill [link_id=3]"', 'Revise("Ida Quill [link_id=2]")']
    searched = run_one(ScriptedEngine({**cite, "decision": lambda live: [("Terminate()", 0.1)]}), bm25)
    assert searched.end_reason == "unparseable:answer"


@pytest.mark.parametrize("failing", ["relevance", "grounding", "both"])
def test_failed_self_check_revises_the_answer(bm25, failing):
    def revise(new: str) -> Responder:
        return lambda live: [(f'Revise("{new} [link_id=1]")', 0.1)]

    overrides = {}
    if failing in ("relevance", "both"):
        overrides["relevance"] = revise("Ida Quill")
    if failing in ("grounding", "both"):
        overrides["grounding"] = revise("Tomas Wren")
    traj = run_one(ScriptedEngine(overrides), bm25)
    rel, gro = (next(s for s in traj.steps if s.kind == k) for k in ("relevance", "grounding"))
    expected = "Tomas Wren" if failing != "relevance" else "Ida Quill"
    assert traj.answer == expected and traj.steps[-1].output == expected
    assert rel.output == ("Keep" if failing == "grounding" else "Ida Quill [link_id=1]")
    assert gro.output == ("Keep" if failing == "relevance" else "Tomas Wren [link_id=1]")
    if failing == "relevance":  # the grounding check sees the revised answer
        assert "Ida Quill" in live_block(gro.prompt)


def test_self_checks_off(bm25):
    traj = run_one(ScriptedEngine(), bm25, self_checks=False)
    assert kinds(traj)[-2:] == ["answer", "final"]
    assert "relevance" not in kinds(traj) and "grounding" not in kinds(traj)
    assert traj.answer == "Mara Quill"


# Per step kind: a garbage completion with the best likelihood, then a valid one.
GARBAGE_FIRST = {
    "decision": lambda live: [("Search(unquoted)", 0.01), ("I think Terminate()", 0.02)] + good_decision(live),
    "summarize": lambda live: [('"a fact with no citation"', 0.01)] + good_summary(live),
    "answer": lambda live: [('"Mara Quill [link_id=99]"', 0.01)] + good_answer(live),
    "relevance": lambda live: [("Keep() because", 0.01)] + keep(live),
    "grounding": lambda live: [('Revise("unterminated)', 0.01)] + keep(live),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE_FIRST))
def test_unparseable_best_sample_falls_back_to_next_parseable(bm25, kind):
    runner = EpisodeRunner(ScriptedEngine({kind: GARBAGE_FIRST[kind]}), bm25, cfg())
    (traj,) = runner.run([SALT])
    assert traj.end_reason == "answered" and traj.answer == "Mara Quill"
    step = next(s for s in traj.steps if s.kind == kind)
    n_bad = 2 if kind == "decision" else 1
    assert step.parse_ok[: n_bad + 1] == [False] * n_bad + [True]
    assert step.chosen == n_bad
    assert runner.stats.parse_failures == sum(st.parse_ok.count(False) for st in traj.llm_steps()) > 0
    assert step.error and step.error.startswith("sample 0:")


@pytest.mark.parametrize("kind", sorted(GARBAGE_FIRST))
def test_no_parseable_sample_ends_the_episode(bm25, kind):
    bad = GARBAGE_FIRST[kind]
    traj = run_one(ScriptedEngine({kind: lambda live: bad(live)[:1]}), bm25)
    assert traj.end_reason == f"unparseable:{kind}" and traj.answer is None
    last = traj.steps[-1]
    assert last.kind == kind and last.parse_ok == [False] * 4 and last.chosen is None and last.output is None


def test_citation_to_a_link_never_shown_is_unparseable(bm25):
    # answering before any search: nothing shown, so any citation is invalid; the uncited sample is taken
    closed = run_one(ScriptedEngine({"decision": lambda live: [("Terminate()", 0.1)],
                                     "answer": lambda live: [('"Mara Quill [link_id=1]"', 0.01),
                                                             ('"Mara Quill"', 0.5)]}), bm25)
    answer = closed.steps[1]
    assert answer.parse_ok == [False, True, False, True] and answer.chosen == 1
    # after one search (links 1-3), link 4 was never shown: the summary citing it is unparseable
    summary_4 = run_one(ScriptedEngine({"summarize": lambda live: [('"fact [link_id=4]"', 0.1)]}), bm25)
    assert summary_4.end_reason == "unparseable:summarize"
    # a summary may cite only the snippets of its own search: link 1 is not among links 4-6
    cite_first = run_one(ScriptedEngine({"summarize": lambda live: [('"fact [link_id=1]"', 0.1)]}), bm25)
    assert cite_first.end_reason == "unparseable:summarize"
    assert [s.kind for s in cite_first.steps].count("summarize") == 2
    # ... while the answer may cite any snippet of the episode (link 1 from the first search)
    early = run_one(ScriptedEngine({"answer": lambda live: [('"Mara Quill [link_id=1]"', 0.1)]}), bm25)
    assert early.end_reason == "answered" and early.steps[-1].output == "Mara Quill"


def test_lowest_perplexity_parseable_sample_is_chosen(bm25):
    def decision(live: str) -> Script:
        plan = good_decision(live)[0][0]
        return [('Search("Kellmouth fishing town")', 0.9), ("Terminate()", 0.7), (plan, 0.05), ("oops", 0.01)]

    engine = ScriptedEngine({"decision": decision})
    traj = run_one(engine, bm25, k_samples=4)
    first = traj.steps[0]
    assert first.chosen == 2 and first.output == "The Salt Orchard publisher"
    assert first.parse_ok == [True, True, True, False]
    nll = [s.mean_nll for s in first.samples]
    assert nll[2] == min(n for n, ok in zip(nll, first.parse_ok, strict=True) if ok)


def test_selection_uses_mean_nll_per_token_not_the_sum():
    step = Step(kind="answer", samples=[
        Sample('"a"', n_tokens=2, sum_logprob=-1.0),               # sum -1.0, mean 0.5
        Sample('"a much longer answer"', n_tokens=10, sum_logprob=-3.0),  # sum -3.0, mean 0.3
        Sample('"b"', n_tokens=1, sum_logprob=float("nan")),
    ])
    assert lowest_nll_parseable(step, ["x", "y", "z"]) == 1
    assert lowest_nll_parseable(step, ["x", None, "z"]) == 0
    assert lowest_nll_parseable(step, [None, None, None]) is None


def test_choose_hook_and_a_failing_step_stay_inside_one_episode(bm25):
    def highest_nll(step: Step, parsed: list) -> int | None:
        if live_question(live_block(step.prompt)) == WREN.question:
            raise KeyError("ranker lost its cache")
        ok = [i for i, p in enumerate(parsed) if p is not None]
        return max(ok, key=lambda i: step.samples[i].mean_nll)

    runner = EpisodeRunner(ScriptedEngine(), bm25, cfg(), choose=highest_nll)
    salt, wren = runner.run([SALT, WREN])
    assert salt.end_reason == "answered" and all(s.chosen == 3 for s in salt.llm_steps())
    assert wren.end_reason == "error: KeyError: 'ranker lost its cache'"
    assert runner.stats.episodes_by_end_reason == {"answered": 1, "error": 1}


# ------------------------------------------------------------ failures never escape run()


def test_engine_failure_ends_that_waves_episodes_only(bm25):
    engine = ScriptedEngine(fail_on_calls=[0])
    runner = EpisodeRunner(engine, bm25, cfg(max_episodes_in_flight=2))
    trajs = runner.run([SALT, WREN, DASK])
    assert [t.question_id for t in trajs] == ["q-salt", "q-wren", "q-dask"]
    assert trajs[0].end_reason == trajs[1].end_reason == "engine_failed: CUDA out of memory while sampling"
    assert trajs[0].steps == [] and trajs[0].answer is None
    assert trajs[2].end_reason == "answered" and trajs[2].answer == "Dask"
    assert runner.stats.episodes_by_end_reason == {"engine_failed": 2, "answered": 1}


def test_search_failure_ends_the_searching_episodes(counting_bm25):
    plans = {**PLANS, WREN.question: ["explode the index"]}

    def decision(live: str) -> Script:
        plan = plans[live_question(live)]
        done = live.count("Action(query=")
        return [(f'Search("{plan[done]}")', 0.2)] if done < len(plan) else [("Terminate()", 0.2)]

    runner = EpisodeRunner(ScriptedEngine({"decision": decision}), counting_bm25, cfg())
    salt, wren = runner.run([SALT, WREN])
    assert wren.end_reason == "search_failed: index unavailable (injected)"
    # SALT's query went into the same failing batch call, so it failed too
    assert salt.end_reason == wren.end_reason
    assert counting_bm25.calls == [["The Salt Orchard publisher", "explode the index"]]
    ok = EpisodeRunner(ScriptedEngine(), counting_bm25, cfg()).run([SALT])
    assert ok[0].end_reason == "answered"


# ------------------------------------------------------------ batching


def test_many_episodes_share_one_engine_call_per_wave(counting_bm25):
    questions = [Question(f"{q.id}-{i}", q.question) for i in range(8) for q in (SALT, WREN, DASK)]
    engine = ScriptedEngine()
    runner = EpisodeRunner(engine, counting_bm25, cfg(max_episodes_in_flight=32))
    trajs = runner.run(questions)
    assert all(t.end_reason == "answered" for t in trajs) and len(trajs) == 24
    n_llm_steps = sum(len(t.llm_steps()) for t in trajs)
    longest = max(len(t.llm_steps()) for t in trajs)
    assert len(engine.calls) == runner.stats.waves == runner.stats.engine_calls == longest == 8
    assert n_llm_steps == runner.stats.prompts == sum(len(c["prompts"]) for c in engine.calls) > 100
    assert runner.stats.search_calls == len(counting_bm25.calls) < runner.stats.waves
    assert sum(len(c) for c in counting_bm25.calls) == sum(t.searches_used for t in trajs)
    # waves mix step kinds: the single-hop question answers while the others still search
    assert any(len(set(c["kinds"])) > 1 for c in engine.calls)
    s = runner.stats
    assert s.samples == 4 * s.prompts and s.parse_failures == 0
    assert s.generated_tokens == sum(x.n_tokens for t in trajs for st in t.llm_steps() for x in st.samples)
    assert s.engine_seconds >= 0 and s.other_seconds >= 0


def test_max_episodes_in_flight_is_respected_and_the_batch_refilled(bm25):
    questions = [Question(f"q{i}", (SALT, DASK)[i % 2].question) for i in range(7)]
    engine = ScriptedEngine()
    trajs = EpisodeRunner(engine, bm25, cfg(max_episodes_in_flight=3)).run(questions)
    sizes = [len(c["prompts"]) for c in engine.calls]
    assert sizes[0] == 3 and max(sizes) == 3
    assert sizes == sorted(sizes, reverse=True)  # full until the queue drains, then only shrinking
    assert all(t.end_reason == "answered" for t in trajs)
    assert sum(sizes) == sum(len(t.llm_steps()) for t in trajs) == 4 * 8 + 3 * 6
    # refilled as episodes finish: fewer waves than running chunks of 3 to completion (3 x 8)
    assert len(engine.calls) < 24


def test_trajectories_per_question_distinct_ids_in_input_order(bm25):
    trajs = EpisodeRunner(ScriptedEngine(), bm25, cfg()).run([SALT, DASK], trajectories_per_question=3)
    assert [t.id for t in trajs] == ["q-salt#0", "q-salt#1", "q-salt#2", "q-dask#0", "q-dask#1", "q-dask#2"]
    with pytest.raises(ValueError, match="trajectories_per_question"):
        EpisodeRunner(ScriptedEngine(), bm25, cfg()).run([SALT], trajectories_per_question=0)
    empty = ScriptedEngine()
    assert EpisodeRunner(empty, bm25, cfg()).run([]) == [] and empty.calls == []


def test_on_done_sees_every_trajectory_once(bm25):
    seen: list[str] = []
    trajs = EpisodeRunner(ScriptedEngine(), bm25, cfg(max_episodes_in_flight=3)).run(
        [SALT, WREN, DASK], on_done=lambda t: seen.append(t.id))
    assert sorted(seen) == sorted(t.id for t in trajs) and len(seen) == 3
    assert seen[0] == "q-dask#0"  # in completion order: the one-hop question finishes first
    assert [t.id for t in trajs] == ["q-salt#0", "q-wren#0", "q-dask#0"]  # results in input order


def test_seeds_are_per_wave_and_runs_are_reproducible(bm25):
    e1, e2 = ScriptedEngine(), ScriptedEngine()
    t1 = EpisodeRunner(e1, bm25, cfg(seed=7)).run([SALT, DASK])
    t2 = EpisodeRunner(e2, bm25, cfg(seed=7)).run([SALT, DASK])
    seeds = [c["seed"] for c in e1.calls]
    assert seeds == [c["seed"] for c in e2.calls] == [wave_seed(7, w) for w in range(len(seeds))]
    assert len(set(seeds)) == len(seeds)
    assert [t.to_dict() for t in t1] == [t.to_dict() for t in t2]
    assert all(c["stop"] == ["\n"] and c["n"] == 4 for c in e1.calls)
    e3 = ScriptedEngine()
    EpisodeRunner(e3, bm25, cfg(seed=8)).run([SALT])
    assert e3.calls[0]["seed"] != seeds[0]


def test_policy_version_is_stamped_on_trajectory_and_steps(bm25):
    (traj,) = EpisodeRunner(ScriptedEngine(), bm25, cfg(), policy_version=3).run([DASK])
    assert traj.policy_version == 3 and {s.policy_version for s in traj.steps} == {3}


# ------------------------------------------------------------ records


def test_trajectories_round_trip_through_json(bm25):
    mixed = ScriptedEngine({"answer": GARBAGE_FIRST["answer"]})
    trajs = EpisodeRunner(mixed, bm25, cfg()).run([SALT, WREN])
    trajs += EpisodeRunner(ScriptedEngine(fail_on_calls=[0]), bm25, cfg()).run([DASK])
    for traj in trajs:
        back = Trajectory.from_dict(json.loads(json.dumps(traj.to_dict())))
        assert back == traj


def test_format_trajectory_shows_every_step(bm25):
    traj = run_one(ScriptedEngine({"answer": GARBAGE_FIRST["answer"]}), bm25)
    traj.steps[0].ranker_best = 1
    text = format_trajectory(traj)
    for n, step in enumerate(traj.steps, start=1):
        assert f"[{n}] {step.kind}" in text
    assert "query: The Salt Orchard publisher" in text
    assert "[link_id=1] " in text and "[link_id=4] " in text
    assert re.search(r"parse errors: sample 0: .*99", text)
    answer_lines = text.split("] answer")[1].splitlines()
    assert re.match(r"^\s+#0 .*PARSE FAIL", answer_lines[1])
    assert re.match(r"^\s*>\s+#1 ", answer_lines[2]) and "PARSE FAIL" not in answer_lines[2]
    assert re.match(r"^\s+R #1 ", text.split("] decision")[1].splitlines()[2])  # the ranker's pick
    assert f"{math.exp(0.2):8.3f}" in text  # perplexity of the scripted samples
    assert text.splitlines()[-2] == "answer: Mara Quill"
    assert text.splitlines()[-1].startswith("ended: answered")
    failed = run_one(ScriptedEngine({"relevance": lambda live: [("nope", 0.1)]}), bm25)
    assert format_trajectory(failed).splitlines()[-1].startswith("ended: unparseable:relevance")
