"""Evaluation on CPU: answer metrics, question-set loading, ``evaluate`` and its files.

The model's text is the only fake: ``ReadingEngine`` implements the Engine protocol
and, like a reader that trusts its search results, searches a scripted query, notes
the title of the top snippet and answers with the latest note. Search is the real
BM25 backend over a corpus written here, so the scores below depend on what the
real retrieval returns.
"""

from __future__ import annotations

import gzip
import json
import math
import re

import pytest

from actors.search.bm25 import BM25Search
from agent.trajectory import Question
from core.config import AgentConfig, ConfigError, EvalConfig
from core.engine import Sample
from core.scoring import contains, exact_match, mean_std, normalize_answer, token_f1, wilson_ci
from evals.datasets import DatasetError, load_dataset, read_dataset
from evals.qa import (
    JUDGE_DETERMINISTIC,
    describe_search,
    end_reasons_line,
    evaluate,
    summary_line,
    write_result,
)
from rest.cli import main

# ------------------------------------------------------------ metrics


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The  Quick, Brown fox!", "quick brown fox"),
        ("An apple a day", "apple day"),
        ("theatre anthem", "theatre anthem"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("\u201cDask\u201d \u2013 river", "dask river"),  # Unicode quotes and dash are punctuation
        ("  Mara\tQuill \n", "mara quill"),
        ("the", ""),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    "pred, golds, em, f1, cont",
    [
        ("Mara Quill", ["mara quill"], True, 1.0, True),
        ("the Dask.", ["Dask"], True, 1.0, True),
        ("river Dask", ["Dask"], False, 2 / 3, True),
        ("Ida Quill", ["Mara Quill"], False, 0.5, False),
        ("Ida Quill", ["Mara Quill", "Ida Quill"], True, 1.0, True),  # the best gold counts
        ("quill quill", ["Quill"], False, 2 / 3, True),  # repeated tokens count once per match
        ("Daskell", ["Dask"], False, 0.0, False),  # containment is by whole tokens
        ("York New", ["New York"], False, 1.0, False),  # F1 ignores order, containment does not
        ("born in New York City, 1921", ["new york city"], False, 2 / 3, True),
        ("", ["Dask"], False, 0.0, False),
        (None, ["Dask"], False, 0.0, False),  # no answer scores zero everywhere
        ("a", ["the"], True, 1.0, False),  # both empty after normalisation: SQuAD's match; no span
    ],
)
def test_exact_match_f1_contains(pred, golds, em, f1, cont):
    assert exact_match(pred, golds) is em
    assert token_f1(pred, golds) == pytest.approx(f1)
    assert contains(pred, golds) is cont


def test_metrics_refuse_missing_golds():
    for metric in (exact_match, token_f1, contains):
        with pytest.raises(ValueError, match="golds is empty"):
            metric("x", [])
        with pytest.raises(TypeError, match="not one string"):
            metric("x", "x")


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (1, 1, 0.2065, 1.0),
        (192, 500, 0.3424, 0.4274),  # 38.4% of 500 (the warm start): 34.2-42.7
    ],
)
def test_wilson_ci_known_values(k, n, low, high):
    lo, hi = wilson_ci(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)
    lo2, hi2 = wilson_ci(n - k, n)  # symmetric under swapping successes and failures
    assert lo2 == pytest.approx(1 - hi) and hi2 == pytest.approx(1 - lo)


def test_wilson_ci_edges():
    assert wilson_ci(0, 0) == (0.0, 1.0)
    narrow, wide = wilson_ci(50, 100, z=1.0), wilson_ci(50, 100, z=2.576)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    for k, n in ((-1, 10), (11, 10), (0, -1)):
        with pytest.raises(ValueError, match="0 <= k <= n"):
            wilson_ci(k, n)


def test_mean_std():
    assert mean_std([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert mean_std([0.4]) == (0.4, 0.0)
    assert mean_std([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.0))
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


# ------------------------------------------------------------ datasets


def test_shipped_sets_load():
    bamboogle = read_dataset("bamboogle")
    assert bamboogle.name == "bamboogle" and len(bamboogle.questions) == 125
    assert len({q.id for q in bamboogle.questions}) == 125
    assert all(q.answers and q.question.strip() for q in bamboogle.questions)
    assert bamboogle.questions[0].answers == ("james madison",)
    hotpot = read_dataset("hotpotqa-dev")
    assert len(hotpot.questions) == 500 and len(load_dataset("hotpotqa-dev")) == 500
    first = hotpot.questions[0]
    assert hotpot.extras[first.id]["type"] in ("bridge", "comparison")
    assert "answers" not in hotpot.extras[first.id] and bamboogle.extras[bamboogle.questions[0].id] == {}


GOOD = '{"id": "a", "question": "Who?", "answers": ["x"]}'


@pytest.mark.parametrize(
    "lines, line_no, fragment",
    [
        ([GOOD, '{"id": "b", "question": "Who?", "answers": ["x"]'], 2, "malformed JSON"),
        ([GOOD, "", '["b", "Who?", ["x"]]'], 3, "expected a JSON object, got list"),
        (['{"question": "Who?", "answers": ["x"]}'], 1, "missing key 'id'"),
        (['{"id": "", "question": "Who?", "answers": ["x"]}'], 1, "'id' must be a non-empty string"),
        (['{"id": 7, "question": "Who?", "answers": ["x"]}'], 1, "'id' must be a non-empty string"),
        ([GOOD, '{"id": "b", "answers": ["x"]}'], 2, "missing key 'question'"),
        ([GOOD, '{"id": "b", "question": "  ", "answers": ["x"]}'], 2, "'question' must be a non-empty"),
        ([GOOD, '{"id": "b", "question": "Who?"}'], 2, "missing key 'answers'"),
        ([GOOD, '{"id": "b", "question": "Who?", "answers": "x"}'], 2, "non-empty list of strings"),
        ([GOOD, '{"id": "b", "question": "Who?", "answers": []}'], 2, "non-empty list of strings"),
        ([GOOD, '{"id": "b", "question": "Who?", "answers": ["x", 3]}'], 2, "non-empty strings, got 3"),
        ([GOOD, '{"id": "b", "question": "Who?", "answers": [" "]}'], 2, "non-empty strings"),
        ([GOOD, '{"id": "b", "question": "Why?", "answers": ["y"]}', GOOD], 3, "duplicate id 'a' (first on line 1)"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, lines, line_no, fragment):
    path = tmp_path / "qs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}:{line_no}: ") and fragment in message
    assert "\n" not in message and isinstance(err.value, ValueError)


def test_empty_or_unknown_files_are_errors(tmp_path):
    for content in ("", "\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(content)
        with pytest.raises(DatasetError, match="no questions"):
            load_dataset(str(path))
    with pytest.raises(DatasetError, match="not a known dataset .*toy-test.*bamboogle.* nor a file"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    long = tmp_path / "long.jsonl"
    long.write_text('{"id": "a", "question": "Who?", "answers": "' + "x" * 500 + '"}\n')
    with pytest.raises(DatasetError) as err:
        load_dataset(str(long))
    assert len(str(err.value)) < len(str(long)) + 120  # long values are cut, the line stays short


def test_files_and_toy_splits(tmp_path):
    rows = [{"id": "t1", "question": "Who founded X?", "answers": ["Mara Quill"], "hops": 2},
            {"id": "t2", "question": "Where is Y?", "answers": ["Olvenport", "Olven port"]}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "mine.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    data = read_dataset(str(tmp_path / "mine.jsonl.gz"))
    assert data.name == "mine" and [q.id for q in data.questions] == ["t1", "t2"]
    assert data.questions[1].answers == ("Olvenport", "Olven port") and data.extras == {"t1": {"hops": 2}, "t2": {}}

    world = tmp_path / "world"
    with pytest.raises(DatasetError, match="toy-test: needs a toy world directory"):
        load_dataset("toy-test")
    world.mkdir()
    with pytest.raises(DatasetError, match=r"toy-dev: no file .*questions/dev\.jsonl"):
        load_dataset("toy-dev", world)
    (world / "questions").mkdir()
    (world / "questions" / "test.jsonl").write_text(text)
    toy = read_dataset("toy-test", str(world))
    assert toy.name == "toy-test" and [q.id for q in toy.questions] == ["t1", "t2"]


# ------------------------------------------------------------ evaluate() with a scripted reader

CORPUS = [
    ("p1", "Mara Quill", "Mara Quill founded Brightwater Press in 1921 in the harbour city of Olvenport."),
    ("p2", "Brightwater Press", "Brightwater Press is a publisher in Olvenport. It published The Salt Orchard."),
    ("p3", "The Salt Orchard", "The Salt Orchard is a novel published by Brightwater Press."),
    ("p4", "Olvenport", "Olvenport is a harbour city, home of Brightwater Press."),
    ("p5", "Tomas Wren", "Tomas Wren is a novelist born in Kellmouth who wrote The Salt Orchard."),
    ("p6", "Kellmouth", "Kellmouth is a fishing town north of Olvenport."),
    ("p7", "Dask", "The Dask is a river that flows through Olvenport and Kellmouth."),
]

QUESTIONS = [
    Question("q-river", "Which river flows through Olvenport?", ("Dask",)),
    Question("q-founder", "Who founded Brightwater Press?", ("Mara Quill",)),
    Question("q-author", "Who wrote The Salt Orchard?", ("Tomas Wren", "T. Wren")),
    Question("q-born", "Where was Tomas Wren born?", ("Kellmouth",)),
    Question("q-garbled", "What is the harbour city?", ("Olvenport",)),
]
#: question -> the reader's one query; its answer is the top snippet's title
QUERIES = {
    "Which river flows through Olvenport?": "river flowing through Olvenport",
    "Who founded Brightwater Press?": "founded Brightwater Press 1921",
    "Who wrote The Salt Orchard?": "novelist who wrote The Salt Orchard",
    "Where was Tomas Wren born?": "Tomas Wren",  # the top hit is Wren's own page: a wrong answer
}
#: answer phrasings other than the bare title
TEMPLATES = {"Which river flows through Olvenport?": "river {}"}


def live_block(prompt: str) -> str:
    return prompt[prompt.rindex("QUESTION = ") :].rstrip()


def step_kind(live: str) -> str:
    for end, kind in (("ACTION_SELECTED =", "decision"), ("SUMMARY =", "summarize"), ("ANSWER =", "answer")):
        if live.endswith(end):
            return kind
    assert live.endswith("VERDICT ="), live[-80:]
    return "check"


def reply(live: str) -> str:
    question = re.match(r'QUESTION = "([^"]*)"', live).group(1)
    kind = step_kind(live)
    if kind == "decision":
        if question not in QUERIES:
            return "I would rather not say"  # unparseable: the episode ends without an answer
        return "Terminate()" if "Action(query=" in live else f'Search("{QUERIES[question]}")'
    if kind == "summarize":
        top = re.search(r'Snippet\(link_id=(\d+), title="([^"]*)"', live)
        return f'"{top.group(2)} [link_id={top.group(1)}]"' if top else "None"
    if kind == "answer":
        notes = re.findall(r'summary="([^"]*) \[link_id=(\d+)\]"', live)
        if not notes:
            return '"unknown"'
        title, link = notes[-1]
        return f'"{TEMPLATES.get(question, "{}").format(title)} [link_id={link}]"'
    return "Keep()"


class ReadingEngine:
    """Engine protocol; every sample of a prompt is ``reply(prompt)``. Records each call's arguments."""

    def __init__(self):
        self.calls: list[dict] = []

    def generate(self, prompts, n, temperature, max_new_tokens, stop=None, seed=None):
        self.calls.append({"prompts": list(prompts), "n": n, "temperature": temperature})
        out = []
        for prompt in prompts:
            text = reply(live_block(prompt))
            n_tok = len(text.split()) + 1
            out.append([Sample(text=" " + text, n_tokens=n_tok, sum_logprob=-0.2 * n_tok) for _ in range(n)])
        return out

    def load_weights(self, state, version):
        pass


def write_corpus(path) -> None:
    path.write_text("".join(json.dumps({"id": i, "title": t, "text": x}) + "\n" for i, t, x in CORPUS))


@pytest.fixture(scope="module")
def bm25(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "toy_corpus.jsonl"
    write_corpus(path)
    return BM25Search(path, cache_dir=tmp_path_factory.mktemp("bm25"))


def agent_cfg(**kw) -> AgentConfig:
    return AgentConfig(**{"prompt_style": "zeroshot", "k_samples": 4, "temperature": 0.5,
                          "search_budget": 3, "max_episodes_in_flight": 16, **kw})


def test_evaluate_scores_every_question_in_one_batched_run(bm25):
    engine = ReadingEngine()
    extras = {"q-river": {"hops": 1}}
    result = evaluate(engine, bm25, QUESTIONS, agent_cfg(), EvalConfig(), dataset="toy", model="m/L",
                      extras=extras)
    preds = {p["question_id"]: p for p in result.predictions}
    assert [p["question_id"] for p in result.predictions] == [q.id for q in QUESTIONS]
    assert {q: p["answer"] for q, p in preds.items()} == {
        "q-river": "river Dask", "q-founder": "Mara Quill", "q-author": "Tomas Wren",
        "q-born": "Tomas Wren", "q-garbled": None}
    assert [p["exact_match"] for p in result.predictions] == [False, True, True, False, False]
    assert [p["contains"] for p in result.predictions] == [True, True, True, False, False]
    assert preds["q-river"]["f1"] == pytest.approx(2 / 3) and preds["q-born"]["f1"] == 0.0
    assert preds["q-garbled"]["end_reason"] == "unparseable:decision"
    assert preds["q-author"]["golds"] == ["Tomas Wren", "T. Wren"]
    assert preds["q-river"]["trajectory_id"] == "q-river#0" and preds["q-river"]["extra"] == {"hops": 1}
    assert preds["q-founder"]["extra"] == {} and preds["q-founder"]["searches_used"] == 1

    assert result.n == 5 and result.n_correct == 2 and result.accuracy == pytest.approx(0.4)
    assert result.ci95 == wilson_ci(2, 5)
    assert result.f1 == pytest.approx((2 / 3 + 1 + 1) / 5) and result.contains == pytest.approx(0.6)
    assert result.end_reasons == {"answered": 4, "unparseable:decision": 1}
    assert result.searches_per_episode == pytest.approx(4 / 5)
    assert result.judge == JUDGE_DETERMINISTIC and result.dataset == "toy" and result.model == "m/L"
    assert result.search["backend"] == "bm25" and result.search["targeted_corpus"] is False
    assert result.runner_stats["search_calls"] >= 1 and result.seconds >= 0

    # eval sampling replaces the agent's, and the first wave holds every question
    assert {(c["n"], c["temperature"]) for c in engine.calls} == {(1, 0.0)}
    assert len(engine.calls[0]["prompts"]) == len(QUESTIONS)
    assert len(engine.calls) == result.runner_stats["engine_calls"] == result.runner_stats["waves"]
    assert result.agent["k_samples"] == 1 and result.agent["temperature"] == 0.0
    assert result.agent["search_budget"] == 3  # everything else is the agent's own config


def test_eval_sampling_limit_and_closed_book(bm25):
    engine = ReadingEngine()
    result = evaluate(engine, None, QUESTIONS, agent_cfg(), EvalConfig(temperature=0.7, k_samples=3, limit=2))
    assert [p["question_id"] for p in result.predictions] == ["q-river", "q-founder"]
    assert {(c["n"], c["temperature"]) for c in engine.calls} == {(3, 0.7)}
    assert all(p["answer"] == "unknown" and p["searches_used"] == 0 for p in result.predictions)
    assert result.accuracy == 0.0 and result.ci95 == wilson_ci(0, 2) and result.searches_per_episode == 0
    assert result.search == {"backend": "closed-book", "targeted_corpus": False, "label": "closed book"}
    assert not any("ACTION_SELECTED" in p for c in engine.calls for p in c["prompts"])  # never decides


def test_evaluate_refuses_the_llm_judge_and_unlabeled_questions(bm25):
    engine = ReadingEngine()
    with pytest.raises(ConfigError, match="LLM Check_Answer judge needs a judge engine"):
        evaluate(engine, bm25, QUESTIONS, agent_cfg(), EvalConfig(judge="llm"))
    with pytest.raises(ValueError, match="no gold answers .*'q-x'"):
        evaluate(engine, bm25, [Question("q-x", "Who?")], agent_cfg(), EvalConfig())
    with pytest.raises(ValueError, match="no questions"):
        evaluate(engine, bm25, [], agent_cfg(), EvalConfig())
    assert engine.calls == []  # refused before any generation


def test_targeted_corpus_is_labelled(tmp_path):
    path = tmp_path / "bamboogle_support.jsonl"
    write_corpus(path)
    info = describe_search(BM25Search(path, cache_dir=tmp_path / "bm25"))
    assert info["targeted_corpus"] is True and "targeted corpus" in info["label"]
    result = evaluate(ReadingEngine(), BM25Search(path, cache_dir=tmp_path / "bm25"), QUESTIONS[:2],
                      agent_cfg(), EvalConfig(), dataset="bamboogle", model="m")
    line = summary_line(result)
    assert line.startswith("bamboogle  model=m  accuracy 50.0% (95% CI 9.5-90.5)  n=2  f1 0.83  ")
    assert f"judge={JUDGE_DETERMINISTIC}" in line and "targeted corpus" in line
    assert end_reasons_line(result).startswith("end reasons: answered 2  (searches/episode 1.00")


def test_write_result_files_audit_the_score(bm25, tmp_path):
    result = evaluate(ReadingEngine(), bm25, QUESTIONS, agent_cfg(), EvalConfig(), dataset="toy", model="m")
    out = tmp_path / "out" / "nested"
    preds_path, score_path = write_result(result, out)
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl", "score.json"]  # no temp files left
    lines = [json.loads(x) for x in preds_path.read_text().splitlines()]
    assert lines == result.predictions
    score = json.loads(score_path.read_text())
    assert score["accuracy"] == sum(x["exact_match"] for x in lines) / len(lines) == 0.4
    assert score["n"] == len(lines) == 5 and score["n_correct"] == 2
    assert score["ci95"] == list(wilson_ci(2, 5)) and score["judge"] == JUDGE_DETERMINISTIC
    assert score["predictions_file"] == "predictions.jsonl" and "predictions" not in score
    assert score["end_reasons"] == {"answered": 4, "unparseable:decision": 1}
    smaller = evaluate(ReadingEngine(), bm25, QUESTIONS, agent_cfg(), EvalConfig(limit=1), dataset="toy")
    write_result(smaller, out)  # a rerun replaces both files
    assert len(preds_path.read_text().splitlines()) == 1 and json.loads(score_path.read_text())["n"] == 1


# ------------------------------------------------------------ the CLI's refusals (before any model loads)


def test_cli_eval_config_errors_are_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD + "\n" + '{"id": "b", "question": "Who?", "answers": "x"}\n')
    model = str(tmp_path / "no-model")
    cases = [
        (["--dataset", str(bad), "--closed-book"], f"{bad}:2: 'answers' must be a non-empty list"),
        (["--dataset", "toy-test", "--closed-book"], "toy-test: needs a toy world directory"),
        (["--dataset", "bamboogle", "--closed-book", "--set", "eval.judge=llm"], "needs a judge engine"),
        (["--dataset", "bamboogle", "--corpus", str(tmp_path / "none.gz")], "--corpus: file not found"),
        (["--dataset", "bamboogle", "--world", str(tmp_path / "nowhere")], "--world: not a directory"),
        (["--dataset", "toy-test", "--world", str(tmp_path)], "--world: no corpus.jsonl.gz in"),
        (["--dataset", "toy-test", "--world", str(tmp_path), "--closed-book"], "toy-test: no file"),
        (["--dataset", "bamboogle", "--closed-book", "--limit", "-1"], "--limit: must be >= 0"),
    ]
    for extra, fragment in cases:
        assert main(["eval", "--model", model, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and fragment in err and err.count("\n") == 1, err
