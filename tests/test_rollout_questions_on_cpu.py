"""Which training questions each generation rolls out on (``rest.fresh_questions``)."""

from __future__ import annotations

import json

from core.config import load_config
from core.run_dir import RunDir
from rest.loop import ReSTLoop


def _loop(tmp_path, *overrides):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Who made thing {i}?", "answers": ["?"]}) + "\n"
                             for i in range(7)))
    cfg = load_config(None, [f"rest.train_dataset={train}", *overrides])
    return ReSTLoop(cfg, RunDir(tmp_path / "run"), progress=False)


def test_every_generation_uses_every_question_by_default(tmp_path):
    loop = _loop(tmp_path, "rest.generations=2")
    assert loop.rollout_question_ids(1) == loop.rollout_question_ids(2) == [f"q{i}" for i in range(7)]


def test_fresh_questions_give_each_generation_its_own_disjoint_share(tmp_path):
    loop = _loop(tmp_path, "rest.generations=3", "rest.fresh_questions=true")
    shares = [loop.rollout_question_ids(g) for g in (1, 2, 3)]
    assert shares == [["q0", "q3", "q6"], ["q1", "q4"], ["q2", "q5"]]
    assert loop.rollout_question_ids(4) == shares[0]  # a run extended past its generations wraps around
