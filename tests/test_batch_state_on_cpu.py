"""The driver's on-disk contracts: the growing batch, state.json, the run dir and `rest-react run` misuse."""

from __future__ import annotations

import json
import os

import pytest

from agent.trajectory import Step, Trajectory
from core.config import ConfigError, load_config
from core.engine import Sample
from core.run_dir import RunDir
from core.state import PHASES, RunState, StateError
from evals.datasets import Dataset
from learner.selection import agreed, clears, distinct_examples, improves, target, to_example
from rest.batch import BatchError, GrowingBatch, step_records
from rest.cli import main
from rest.evaluation import score, trajectory_counters
from rest.runs import open_run
from rest.workers import make_tasks


def _step(kind, texts, ok, chosen=0, scores=None, best=None, version=0):
    samples = [Sample(text=t, n_tokens=len(t.split()), sum_logprob=-1.0 * (i + 1)) for i, t in enumerate(texts)]
    return Step(kind=kind, prompt=f"{kind} prompt", samples=samples, parse_ok=ok, chosen=chosen,
                scores=scores, ranker_best=best, policy_version=version)


def _traj(qid="q1", j=0, version=0):
    steps = [
        _step("decision", [' Search("a")', " garbage", ' Search("b")'], [True, False, True],
              chosen=0, scores=[0.2, -9.0, 0.8], best=2, version=version),
        Step(kind="search", query="b"),
        _step("summarize", [" x", " y"], [False, False], chosen=None, scores=[-9, -9], best=0),
        _step("answer", [" bad", ' "Paris"'], [False, True], chosen=1, scores=[5.0, 1.0], best=0),
        Step(kind="final", output="Paris"),
    ]
    return Trajectory(id=f"{qid}#{j}", question_id=qid, question="Where?", policy_version=version, steps=steps,
                      answer="Paris", end_reason="answered")


# ------------------------------------------------------------------ records


def test_records_take_the_rankers_best_and_never_an_unparsed_sample():
    records = step_records(1, _traj())
    assert [r["step_kind"] for r in records] == ["decision", "answer"]  # summarize: nothing parsed
    decision, answer = records
    assert decision["chosen"] == 2 and decision["continued"] == 0
    assert answer["chosen"] == 1  # the ranker's pick (0) did not parse: best usable instead
    assert decision["step_index"] == 0 and answer["step_index"] == 3
    assert decision["samples"][2] == [' Search("b")', 1, -3.0]
    assert to_example(decision).completion == ' Search("b")\n'
    assert to_example(decision).prompt == "decision prompt"


def test_a_min_score_keeps_steps_whose_chosen_sample_scored_below_it_out_of_the_batch():
    # chosen scores: decision 0.8 (sample 2), answer 1.0 (sample 1, the ranker's pick did not parse)
    def kept(traj, min_score):
        return [r for r in step_records(1, traj) if clears(r, min_score)]

    assert [r["step_kind"] for r in kept(_traj(), 0.9)] == ["answer"]
    assert [r["step_kind"] for r in kept(_traj(), 0.8)] == ["decision", "answer"]
    assert kept(_traj(), 1.5) == []
    assert len(kept(_traj(), None)) == 2  # no threshold
    unscored = _traj()
    for step in unscored.steps:
        step.scores = None
    assert len(kept(unscored, 5.0)) == 2  # no scores (no ranker yet): nothing to compare


def _answered(qid, j, answer):
    t = _traj(qid, j)
    t.answer = answer
    t.end_reason = "answered" if answer is not None else "unparseable:answer"
    return t


def test_agreed_keeps_only_the_trajectories_that_give_their_questions_majority_answer():
    trajs = [
        # q1: 3 of 4 say Paris (normalised: "The Paris." is "paris"): those 3 train, Lyon does not
        _answered("q1", 0, "Paris"), _answered("q1", 1, "the Paris."), _answered("q1", 2, "Lyon"),
        _answered("q1", 3, "PARIS"),
        # q2: a 2-2 tie is no majority
        _answered("q2", 0, "Rome"), _answered("q2", 1, "Rome"), _answered("q2", 2, "Oslo"), _answered("q2", 3, "Oslo"),
        # q3: every answer different; q4: two agree but two ended without an answer (2 of 4 = 0.5)
        _answered("q3", 0, "a"), _answered("q3", 1, "b"), _answered("q3", 2, "c"), _answered("q3", 3, "d"),
        _answered("q4", 0, "Bern"), _answered("q4", 1, None), _answered("q4", 2, "Bern"), _answered("q4", 3, None),
    ]
    assert agreed(trajs, 0.5) == {"q1#0", "q1#1", "q1#3", "q4#0", "q4#2"}
    assert agreed(trajs, 0.75) == {"q1#0", "q1#1", "q1#3"}  # q4's 2 of 4 is below 0.75
    assert agreed(trajs, 1.0) == set()
    # one trajectory agrees with nothing, and an empty answer is no vote
    assert agreed([_answered("q5", 0, "Paris")], 0.0) == set()
    assert agreed([_answered("q6", 0, "..."), _answered("q6", 1, "...")], 0.0) == set()


def test_agreed_needs_two_trajectories_per_question(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rest:\n  keep_trajectories: agreed\n  trajectories_per_question: [4, 1]\n")
    with pytest.raises(ConfigError, match=r"keep_trajectories: agreed needs trajectories_per_question >= 2"):
        load_config(cfg)
    cfg.write_text("rest:\n  keep_trajectories: agreed\n  trajectories_per_question: [4]\n")
    assert load_config(cfg).rest.keep_trajectories == "agreed"
    cfg.write_text("rest:\n  keep_trajectories: majority\n")
    with pytest.raises(ConfigError, match=r"rest.keep_trajectories"):
        load_config(cfg)


def test_the_store_phase_keeps_only_agreed_trajectories_when_asked(tmp_path):
    from core.io import write_jsonl
    from rest.loop import ReSTLoop

    rows = [{"id": f"q{i}", "question": f"Who made thing {i}?", "answers": ["?"]} for i in range(2)]
    for name in ("train", "test"):
        write_jsonl(tmp_path / f"{name}.jsonl", rows if name == "train" else [{**rows[0], "id": "t0", "question": "?"}])
    trajs = [_answered("q0", 0, "Paris"), _answered("q0", 1, "Paris"), _answered("q1", 0, "Rome"),
             _answered("q1", 1, "Oslo")]
    for keep, kept in (("all", 4), ("agreed", 2)):
        cfg = load_config(None, [f"rest.train_dataset={tmp_path / 'train.jsonl'}",
                                 f"rest.eval_datasets=[{tmp_path / 'test.jsonl'}]", f"rest.keep_trajectories={keep}",
                                 "rest.trajectories_per_question=[2]"])
        loop = ReSTLoop(cfg, RunDir(tmp_path / keep), progress=False)
        write_jsonl(loop.run.trajectories(1), [t.to_dict() for t in trajs])
        counters = loop.store(1)
        assert (counters["trajectories_kept"], counters["trajectories_dropped"]) == (kept, 4 - kept)
        assert {r["trajectory_id"] for r in loop.batch.all()} == {t.id for t in trajs[:kept]}


def test_improved_examples_are_the_steps_where_the_rankers_pick_differs_from_the_rollouts(tmp_path):
    records = step_records(1, _traj())  # decision: pick 2, continued 0; answer: pick 1, continued 1
    assert [improves(r) for r in records] == [True, False]
    same_text = dict(records[0], samples=[[' Search("b")', 1, -1.0], *records[0]["samples"][1:]])
    assert not improves(same_text)  # another index with the same text is no improvement
    assert improves(dict(records[0], continued=None))  # nothing continued: the target is all there is
    batch = GrowingBatch(tmp_path / "batch")
    batch.write_gen(1, records)
    assert [e.completion for e in batch.training_examples(1, True, improved=True)[0]] == [' Search("b")\n']
    assert len(batch.training_examples(1, True)[0]) == 2  # the students' examples: every step


def test_improved_policy_examples_need_a_rollout_that_continues_by_perplexity(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rest:\n  policy_examples: improved\n  continue_with: ranker\n")
    with pytest.raises(ConfigError, match=r"policy_examples: improved needs continue_with: perplexity"):
        load_config(cfg)


def test_with_improved_policy_examples_l_fine_tunes_on_the_improved_steps_and_the_students_on_all(tmp_path):
    """The driver's wiring of ``rest.policy_examples``: the learner group is replaced by a recorder at its
    boundary (what each fit is given), everything before it is the real loop."""
    from types import SimpleNamespace

    from core.io import write_jsonl
    from learner.group import FitResult
    from rest.loop import ReSTLoop

    write_jsonl(tmp_path / "train.jsonl", [{"id": "q1", "question": "Where?", "answers": ["?"]}])
    write_jsonl(tmp_path / "test.jsonl", [{"id": "t0", "question": "Who made it?", "answers": ["?"]}])
    for model in ("L", "S"):
        (tmp_path / model).mkdir()
        (tmp_path / model / "config.json").write_text("{}")
    fits = {}

    class Learner:
        def fit(self, model, examples, out, seed, name):
            fits[name] = [e.completion for e in examples]
            return FitResult(name, out, [0.1], 1, len(examples), 0.1, 1.0)

    cfg = load_config(None, [f"rest.train_dataset={tmp_path / 'train.jsonl'}", f"rest.eval_datasets=[{tmp_path / 'test.jsonl'}]",
                             "rest.policy_examples=improved", f"models.policy={tmp_path / 'L'}",
                             f"models.students={{S: {tmp_path / 'S'}}}", "world.dir="])
    loop = ReSTLoop(cfg, RunDir(tmp_path / "run"), progress=False)
    loop.cluster = SimpleNamespace(learner=Learner(), gpus_to=lambda side, sleep_level=1: {})  # not colocated
    loop.batch.write_gen(1, step_records(1, _traj()))  # decision improved (pick 2, continued 0), answer not
    assert loop.finetune(1)["examples"] == 1 and loop.distil(1)["students"]["S"]["examples"] == 2
    assert fits == {"L": [' Search("b")\n'], "S": [' Search("b")\n', ' "Paris"\n']}
    # a batch without one improved step trains L on nothing: one line that names the setting
    from rest.loop import RunError

    empty = ReSTLoop(cfg, RunDir(tmp_path / "empty"), progress=False)
    empty.batch.write_gen(1, [r for r in step_records(1, _traj()) if not improves(r)])
    with pytest.raises(RunError, match=r"^gen 1 finetune: the growing batch has no examples \(no step where the "
                                       r"ranker's pick differs from the rollout's, rest.policy_examples: improved;"):
        empty.finetune(1)


def test_the_target_falls_back_without_a_ranker():
    step = _step("decision", [" a", " b"], [True, True], scores=None, best=None)
    step.samples[1].sum_logprob = -0.1  # lower NLL wins the tie
    assert target(step) == 1
    step = _step("decision", [" a\nb"], [True], best=0)  # not one line: not a training target
    assert target(step) is None


# ------------------------------------------------------------------ the store


def test_batch_is_per_generation_atomic_and_rewrites_without_duplicates(tmp_path):
    batch = GrowingBatch(tmp_path / "batch")
    assert batch.gens() == [] and batch.all() == []
    g1 = step_records(1, _traj("q1")) + step_records(1, _traj("q2"))
    g2 = step_records(2, _traj("q1", version=1))
    assert batch.write_gen(2, g2) == 2
    assert batch.write_gen(1, g1) == 4
    assert batch.gens() == [1, 2]
    assert [r["gen"] for r in batch.all()] == [1, 1, 1, 1, 2, 2]
    assert len(batch.all(upto=1)) == 4
    batch.write_gen(1, g1)  # a resumed store phase writes its generation again
    assert len(batch.all()) == 6
    assert len(batch.examples()) == 6
    assert sorted(os.listdir(tmp_path / "batch")) == ["gen-1.jsonl", "gen-2.jsonl"]


def test_distinct_examples_train_each_prompt_and_target_once_in_first_seen_order(tmp_path):
    batch = GrowingBatch(tmp_path / "batch")
    batch.write_gen(1, step_records(1, _traj("q1")))
    retraced = step_records(2, _traj("q1", j=1, version=1))  # the same steps again, another trajectory
    other = step_records(2, _traj("q1", j=2, version=1))
    other[0]["chosen"] = 0  # the same decision prompt, another target: a different example
    batch.write_gen(2, retraced + other)
    every = batch.examples()
    assert len(every) == 6
    distinct = distinct_examples(every)
    assert [(e.prompt, e.completion) for e in distinct] == [
        ("decision prompt", ' Search("b")\n'), ("answer prompt", ' "Paris"\n'), ("decision prompt", ' Search("a")\n')]
    assert distinct_examples(batch.examples(upto=1)) == every[:2]


def test_a_crash_while_writing_keeps_the_old_generation(tmp_path, monkeypatch):
    batch = GrowingBatch(tmp_path)
    batch.write_gen(1, step_records(1, _traj("q1")))
    before = batch.path(1).read_text()

    def crash(*_a, **_k):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        batch.write_gen(1, step_records(1, _traj("q1")) + step_records(1, _traj("q2")))
    assert batch.path(1).read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["gen-1.jsonl"]  # no temp file left behind


def test_bad_records_are_refused(tmp_path):
    batch = GrowingBatch(tmp_path)
    recs = step_records(1, _traj("q1"))
    with pytest.raises(ValueError, match="duplicate"):
        batch.write_gen(1, recs + recs)
    with pytest.raises(ValueError, match="gen 1 written into gen 2"):
        batch.write_gen(2, recs)
    with pytest.raises(BatchError, match="did not parse"):
        batch.write_gen(1, [{**recs[0], "chosen": 1}])
    batch.path(3).write_text('{"gen": 3}\n')
    with pytest.raises(BatchError, match=r"gen-3.jsonl:1: missing keys"):
        batch.read_gen(3)
    batch.path(3).write_text(json.dumps(recs[0]) + "\nnot json\n")
    with pytest.raises(BatchError, match=r"gen-3.jsonl:2: malformed JSON"):
        batch.read_gen(3)
    with pytest.raises(BatchError, match="not in the batch"):
        batch.read_gen(7)


# ------------------------------------------------------------------ state.json


def test_state_marks_phases_in_order_and_survives_a_restart(tmp_path):
    path = tmp_path / "state.json"
    state = RunState.load(path)
    assert state.remaining_generations(2) == [0, 1, 2] and state.resume_point() == "start"
    with pytest.raises(StateError, match="before generation 0"):
        state.mark(1, "rollout")
    state.mark(0, "eval", {"seconds": 1.5})
    state.mark(0, "report")
    with pytest.raises(StateError, match="before 1/rollout"):
        state.mark(1, "rank")
    for phase in PHASES[:4]:
        state.mark(1, phase, {"seconds": 2.0})
    state.mark(1, "broadcast", {"seconds": 0.1}, version=1)
    again = RunState.load(path)
    assert again.version == 1
    assert again.resume_point() == "1/distil"
    assert again.remaining_generations(2) == [1, 2]
    assert again.timings()["gen-0"] == {"eval": 1.5}
    assert again.timings()["gen-1"]["broadcast"] == 0.1
    with pytest.raises(StateError, match="no phase"):
        again.mark(0, "rollout")


def test_a_corrupt_state_file_is_one_clear_error(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{")
    with pytest.raises(StateError, match="not a valid state file"):
        RunState.load(path)
    path.write_text(json.dumps({"version": 0, "done": {"1/dance": {}}}))
    with pytest.raises(StateError, match="unknown phase"):
        RunState.load(path)


# ------------------------------------------------------------------ run dir


def _cfg(tmp_path, *extra):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    return load_config(None, [f"engine.model={model}", "rest.generations=1", *extra])


def test_run_dir_writes_the_resolved_config_and_refuses_to_clobber(tmp_path):
    run, cfg = open_run(tmp_path / "runs", "r1", _cfg(tmp_path), resume=False)
    assert run == RunDir(tmp_path / "runs" / "r1")
    assert cfg.models.policy == str(tmp_path / "model")  # defaulted from engine.model
    assert load_config(run.config).models.policy == cfg.models.policy
    with pytest.raises(ConfigError, match="already exists"):
        open_run(tmp_path / "runs", "r1", _cfg(tmp_path), resume=False)
    _, resumed = open_run(tmp_path / "runs", "r1", None, resume=True)
    assert resumed.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match=r"rest.generations: 1 in the run, 3 now"):
        open_run(tmp_path / "runs", "r1", _cfg(tmp_path, "rest.generations=3"), resume=True)
    with pytest.raises(ConfigError, match="not a run dir"):
        open_run(tmp_path / "runs", "nope", None, resume=True)
    with pytest.raises(ConfigError, match="valid run name"):
        open_run(tmp_path / "runs", "../x", None, resume=False)
    assert run.checkpoint("S", 2).name == "S-gen2"
    assert run.trajectories(1).name == "gen-1.jsonl"


@pytest.mark.parametrize("argv, message", [
    (["run"], "--config: required"),
    (["run", "--resume"], "--resume: needs --name"),
    (["run", "--resume", "--name", "x", "--set", "agent.k_samples=2"], "--set: needs --config"),
    (["run", "--config", "configs/smoke_rest.yaml", "--set", "rest.bogus=1"], "rest.bogus: unknown key"),
])
def test_run_cli_misuse_exits_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ tasks and scoring


def test_tasks_cover_every_question_once_with_their_own_seeds():
    tasks = make_tasks([f"q{i}" for i in range(7)], 3, lambda i: 100 + i)
    assert [t.question_ids for t in tasks] == [["q0", "q1", "q2"], ["q3", "q4", "q5"], ["q6"]]
    assert [t.seed for t in tasks] == [100, 101, 102]


def test_score_turns_trajectories_into_an_eval_result(tmp_path):
    from agent.trajectory import Question

    data = Dataset(name="toy-test", path=tmp_path / "x.jsonl",
                   questions=[Question("q1", "Where?", ("Paris",)), Question("q2", "Who?", ("Ann",))])
    trajs = [_traj("q2").to_dict(), _traj("q1").to_dict()]
    cfg = load_config(None, ["search.backend=http"])
    result = score(data, trajs, cfg, "L", seconds=1.0)
    assert result.n == 2 and result.accuracy == 0.5
    assert [p["question_id"] for p in result.predictions] == ["q1", "q2"]
    assert result.agent["temperature"] == cfg.eval.temperature
    assert trajectory_counters(trajs) == {"episodes": 2, "llm_steps": 6, "samples": 14,
                                          "generated_tokens": 14, "parse_failures": 8}
