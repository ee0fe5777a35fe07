"""The leakage guard: eval questions and their gold passages never reach a training example."""

from __future__ import annotations

import json

import pytest

from agent.trajectory import Question, Step, Trajectory
from core.config import load_config
from core.engine import Sample
from core.run_dir import RunDir
from core.search import Snippet
from evals.datasets import read_dataset
from rest.leakage import HeldOut
from rest.loop import ReSTLoop, RunError


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def test_set(tmp_path):
    return _write(tmp_path / "test.jsonl", [
        {"id": "t1", "question": "Who founded  Nova Press?", "answers": ["Anna Berg"], "gold_passages": ["p7", "p8"]},
        {"id": "t2", "question": "Where was Ola born?", "answers": ["Oslo"]},  # no gold passages recorded
    ])


def _llm(kind):
    return Step(kind=kind, prompt=f"{kind} prompt", samples=[Sample(text=" x", n_tokens=1, sum_logprob=-1.0)],
                parse_ok=[True], chosen=0)


def _episode(doc_ids, tid="q1#0"):
    """decision, search (showing ``doc_ids``), summarize, answer."""
    snippets = [Snippet(link_id=i, doc_id=d, title=d, text="...") for i, d in enumerate(doc_ids)]
    steps = [_llm("decision"), Step(kind="search", query="nova press founder", snippets=snippets),
             _llm("summarize"), _llm("answer")]
    return Trajectory(id=tid, question_id="q1", question="Q?", steps=steps)


def test_held_out_collects_ids_folded_texts_and_gold_passages(test_set):
    held = HeldOut.of([read_dataset(str(test_set))])
    assert held.ids == {"t1": "test:t1", "t2": "test:t2"}
    assert held.texts["who founded nova press?"] == "test:t1"
    assert held.passages == {"p7": "test:t1", "p8": "test:t1"}


def test_a_training_question_equal_to_an_eval_question_is_flagged_by_id_or_text(test_set):
    held = HeldOut.of([read_dataset(str(test_set))])
    train = [Question(id="a", question="Who wrote Nova?"), Question(id="t2", question="Other?"),
             Question(id="b", question="who founded nova press? ")]
    assert held.check_questions(train, "train") == [
        "training question train:t2 is eval question test:t2", "training question train:b is eval question test:t1"]
    assert held.check_questions(train[:1], "train") == []


def test_only_kept_steps_after_a_gold_passage_was_shown_are_flagged(test_set):
    held = HeldOut.of([read_dataset(str(test_set))])
    clean, leaky = _episode(["p1", "p2"]), _episode(["p1", "p8"], tid="q1#1")
    every = {(t.id, i) for t in (clean, leaky) for i in (0, 2, 3)}
    found = held.check_trajectories([clean, leaky], every)
    assert found == [
        "training example q1#1 step 2 (summarize) was shown passage p8, a gold passage of eval question test:t1 "
        "(search 'nova press founder')",
        "training example q1#1 step 3 (answer) was shown passage p8, a gold passage of eval question test:t1 "
        "(search 'nova press founder')",
    ]
    # the decision before the search saw nothing; steps that make no training example do not count
    assert held.check_trajectories([leaky], {("q1#1", 0)}) == []


def test_the_driver_refuses_a_training_set_holding_an_eval_question_before_any_work(tmp_path, test_set):
    train = _write(tmp_path / "train.jsonl", [{"id": "x1", "question": "Who directed Red Sky?", "answers": ["?"]},
                                              {"id": "x2", "question": "WHERE was Ola born?", "answers": ["?"]}])
    cfg = load_config(None, [f"rest.train_dataset={train}", f"rest.eval_datasets=[{test_set}]"])
    loop = ReSTLoop(cfg, RunDir(tmp_path / "run"), progress=False)
    with pytest.raises(RunError, match=r"^before rollout: leakage: training question train:x2 is eval question "
                                       r"test:t2; nothing of it was trained on$"):
        loop.run_all()
    assert not (tmp_path / "run" / "batch").exists()
