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


def test_rename_examples_renames_each_fine_tune_example_and_needs_a_toy_world(tmp_path):
    """``rest.rename_examples``: what the fine-tunes train on, each example under its own renaming of the
    toy world's name pools (the story inside an example stays consistent); refused without a toy world."""
    import pytest

    from agent.trajectory import Step, Trajectory
    from core.config import ConfigError
    from core.engine import Sample
    from rest.batch import step_records

    with pytest.raises(ConfigError, match="rest.rename_examples: .* set world.dir"):
        _loop(tmp_path, "rest.rename_examples=true", "world.dir=")
    note = '"Gray was born in Bolton in 1950. [link_id=4]"'
    traj = Trajectory("q0#0", "q0", "Where was Lucy Gray born?", steps=[
        Step("summarize", prompt="Snippet: Lucy Gray was born in Bolton in 1950.\nNote:",
             samples=[Sample(note, 12, -1.0)], parse_ok=[True], chosen=0, scores=[3.0], ranker_best=0)])
    for renaming in (False, True):
        (tmp_path / str(renaming)).mkdir()
        loop = _loop(tmp_path / str(renaming), "world.dir=worlds/none", f"rest.rename_examples={str(renaming).lower()}")
        loop.batch.write_gen(1, step_records(1, traj))
        (example,), _ = loop._training_examples(1)
        if not renaming:
            assert example.completion == note + "\n"
            continue
        assert example.completion != note + "\n" and "Lucy" not in example.prompt + example.completion
        words = example.prompt.split()  # the renamed surname, place and year of the snippet are the note's
        surname, place, year = words[2], words[6], words[8].rstrip(".")
        assert example.completion.startswith(f'"{surname} was born in {place} in {year}.')
