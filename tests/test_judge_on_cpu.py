"""The Check_Answer LLM judge on CPU: strict verdicts, R runs averaged, wiring into eval and its CLI.

Exact verdicts come from ``ScriptedJudge``, an engine whose text per (answer, run) is
fixed (the model's text is the only fake); the real transformers path runs once on a
tiny random Llama, whose text almost never parses and so lands in "no verdict".
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from actors.engines.hf import HFEngine
from agent.trajectory import Question, Step, Trajectory
from core.config import AgentConfig, Config, ConfigError, EvalConfig, load_config
from core.engine import Sample
from core.scoring import mean_std, wilson_ci
from evals.judge import CheckAnswerJudge, check_llm_judge
from evals.qa import (
    JUDGE_DETERMINISTIC,
    apply_llm_judge,
    check_judge,
    evaluate,
    score_trajectories,
    summary_line,
    write_result,
)
from prompts import check_answer_prompt
from rest.cli import main
from toyworld.modelzoo import init_model, train_tokenizer

torch.set_num_threads(1)


class ScriptedJudge:
    """Engine protocol: the completion of run r for a prompt is ``script[(answer, reference)][r]``."""

    def __init__(self, script: dict[tuple[str, str], list[str]]):
        self.script = script
        self.calls: list[dict] = []
        self.version = 0

    def generate(self, prompts, n, temperature, max_new_tokens, stop=None, seed=None):
        self.calls.append({"prompts": list(prompts), "n": n, "temperature": temperature, "stop": stop})
        out = []
        for p in prompts:
            live = p[p.rindex("QUESTION = "):]
            answer = re.search(r'ANSWER = "([^"]*)"', live).group(1)
            reference = re.search(r'REFERENCE = "([^"]*)"', live).group(1)
            texts = self.script[(answer, reference)]
            assert len(texts) == n
            out.append([Sample(t, 2, -0.1) for t in texts])
        return out

    def load_weights(self, state, version):
        pass


ITEMS = [  # (question, answer, golds)
    ("Who founded Brightwater Press?", "Mara Quill", ["Mara Quill"]),
    ("Which river flows through Olvenport?", "the river Dask", ["Dask"]),
    ("Who wrote The Salt Orchard?", "T. Wren", ["Tomas Wren", "T. Wren"]),
    ("Where was Tomas Wren born?", "Olvenport", ["Kellmouth"]),
    ("What is the harbour city?", None, ["Olvenport"]),
]
SCRIPT = {
    ("Mara Quill", "Mara Quill"): [" True", " True", " True"],
    ("the river Dask", "Dask"): [" True", "True.", " False"],  # "True." is no verdict
    ("T. Wren", "Tomas Wren"): [" False", " maybe", " False"],
    ("T. Wren", "T. Wren"): [" True", " False", " yes"],
    ("Olvenport", "Kellmouth"): [" False", " False", "False  "],
}


def scripted(runs: int = 3) -> tuple[CheckAnswerJudge, ScriptedJudge]:
    engine = ScriptedJudge(SCRIPT)
    return CheckAnswerJudge(engine, model="/models/judge-7b/", runs=runs, temperature=0.7, seed=5), engine


def test_verdicts_are_strict_and_any_gold_counts():
    judge, engine = scripted()
    runs = judge.judge(ITEMS)
    assert runs.verdicts == [
        [True, True, True],
        [True, None, False],
        [True, None, None],  # gold 2 accepted in run 0; in runs 1-2 neither gold was accepted and one did not parse
        [False, False, False],
        [False, False, False],  # no answer: incorrect, the judge never asked
    ]
    assert runs.no_answer == 1
    assert runs.accuracy_per_run() == [3 / 5, 1 / 5, 1 / 5]
    assert runs.no_verdict_per_run() == [0, 2, 1]
    s = runs.summary()
    assert (s["mean"], s["std"]) == pytest.approx(mean_std([0.6, 0.2, 0.2]))
    assert s["runs"] == 3 and s["temperature"] == 0.7 and s["judge"] == judge.name
    assert judge.name == "llm: Check_Answer 5-shot (judge-7b), mean of 3 runs at T=0.7"
    assert runs.texts[1] == [" True", "True.", " False"] and runs.texts[4] == []
    # one engine call: R samples of every (question, answer, gold) prompt, stopped at the line end
    (call,) = engine.calls
    assert call["n"] == 3 and call["temperature"] == 0.7 and call["stop"] == ["\n"]
    assert len(call["prompts"]) == 5  # 4 answered questions, one with two golds
    assert call["prompts"][0] == check_answer_prompt(*ITEMS[0][:2], "Mara Quill")
    assert call["prompts"][0].count("CORRECT = ") == 5 and call["prompts"][0].endswith("CORRECT =")


def test_judge_refuses_identical_runs_and_bad_configs(tmp_path):
    with pytest.raises(ValueError, match="would all be identical"):
        CheckAnswerJudge(ScriptedJudge({}), model="m", runs=3, temperature=0.0)
    with pytest.raises(ValueError, match="runs must be >= 1"):
        CheckAnswerJudge(ScriptedJudge({}), model="m", runs=0)
    with pytest.raises(ConfigError, match="needs a judge engine: set eval.judge_model"):
        check_llm_judge(EvalConfig(judge="llm"))
    with pytest.raises(ConfigError, match="eval.judge_model: not a model directory"):
        check_llm_judge(EvalConfig(judge="llm", judge_model=str(tmp_path / "none")))
    with pytest.raises(ConfigError, match="judge_temperature: 0 makes all 10 judge runs identical"):
        check_llm_judge(EvalConfig(judge="llm", judge_model=str(tmp_path), judge_temperature=0.0))
    assert check_llm_judge(EvalConfig(judge="llm", judge_model=str(tmp_path), judge_runs=1, judge_temperature=0.0))


def _result():
    """A deterministic-judge result over ITEMS, from real Trajectory objects."""
    questions = [Question(f"q{i}", q, tuple(g)) for i, (q, _, g) in enumerate(ITEMS)]
    trajectories = []
    for i, (q, a, _) in enumerate(ITEMS):
        step = Step("answer", prompt="p", samples=[Sample(f'"{a}"', 3, -0.3)], parse_ok=[True], chosen=0)
        trajectories.append(Trajectory(f"q{i}#0", f"q{i}", q, steps=[step], answer=a,
                                       end_reason="answered" if a else "unparseable:answer"))
    return score_trajectories(questions, trajectories, dataset="toy", model="m", judge=JUDGE_DETERMINISTIC,
                              search={"label": "closed book"}, agent=AgentConfig(), runner_stats={}, seconds=1.0)


def test_apply_llm_judge_rescores_and_keeps_an_audit_trail(tmp_path):
    base = _result()
    assert base.accuracy == pytest.approx(2 / 5) and base.llm_judge is None  # exact match: Mara Quill, T. Wren
    judge, _ = scripted()
    result = apply_llm_judge(base, judge)
    mean, std = mean_std([0.6, 0.2, 0.2])
    assert result.accuracy == pytest.approx(mean) and result.judge == judge.name
    assert result.ci95 == wilson_ci(round(mean * 5), 5) and result.n_correct == 2
    assert result.llm_judge["std"] == pytest.approx(std) and result.llm_judge["exact_match"] == pytest.approx(0.4)
    assert result.llm_judge["no_verdict_per_run"] == [0, 2, 1]
    p = result.predictions[1]
    assert p["judge_verdicts"] == [True, None, False] and p["judge_correct"] == pytest.approx(1 / 3)
    assert p["exact_match"] is False and p["judge_texts"][1] == "True."
    line = summary_line(result)
    assert f"accuracy {100 * mean:.1f}% +- {100 * std:.1f} over 3 judge runs" in line
    assert "no verdict 3" in line and f"judge={judge.name}" in line

    _, score_path = write_result(result, tmp_path)
    score = json.loads(score_path.read_text())
    assert score["judge"] == judge.name and score["llm_judge"]["accuracy_per_run"] == pytest.approx([0.6, 0.2, 0.2])
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [x["judge_verdicts"] for x in lines][:2] == [[True, True, True], [True, None, False]]


def test_evaluate_applies_the_judge_only_when_configured():
    judge, engine = scripted()
    q = [Question("q", "Who?", ("x",))]
    with pytest.raises(ConfigError, match="LLM Check_Answer judge needs a judge engine"):
        evaluate(engine, None, q, AgentConfig(), EvalConfig(judge="llm"))
    with pytest.raises(ConfigError, match="an LLM judge was given but eval.judge=deterministic"):
        evaluate(engine, None, q, AgentConfig(), EvalConfig(), llm_judge=judge)
    assert engine.calls == []


# ------------------------------------------------------------ the real transformers path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random tiny Llama whose tokenizer knows the judge prompt's words."""
    d = tmp_path_factory.mktemp("judge")
    texts = [check_answer_prompt(q, a or "", g[0]) for q, a, g in ITEMS] * 20
    train_tokenizer(texts, d / "tok", vocab_size=300)
    return init_model("tiny", d / "tok", d / "model", seed=0)


def test_real_hf_judge_runs_differ_and_repeat(tiny_model):
    cfg = Config(eval=EvalConfig(judge="llm", judge_model=str(tiny_model), judge_runs=3, judge_temperature=1.0,
                                 judge_seed=11))
    judge = CheckAnswerJudge.from_config(cfg)
    assert isinstance(judge.engine, HFEngine)
    a, b = judge.judge(ITEMS), judge.judge(ITEMS)
    assert a.verdicts == b.verdicts and a.texts == b.texts  # the seed fixes the runs
    assert len(a.verdicts) == 5 and all(len(v) == 3 for v in a.verdicts)
    assert all(v in (True, False, None) for vs in a.verdicts for v in vs)
    assert any(len(set(t)) > 1 for t in a.texts if t)  # sampled runs differ
    assert sum(a.no_verdict_per_run()) + sum(x * 5 for x in a.accuracy_per_run()) <= 15


def test_cli_eval_with_the_llm_judge_writes_audited_predictions(tiny_model, tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"id": f"m{i}", "question": q, "answers": g}) + "\n"
                            for i, (q, _, g) in enumerate(ITEMS)))
    out = tmp_path / "out"
    code = main(["eval", "--model", str(tiny_model), "--dataset", str(data), "--closed-book", "--limit", "3",
                 "--judge-model", str(tiny_model), "--set", "eval.judge_runs=2", "--set", "agent.prompt_style=zeroshot",
                 "--set", "agent.max_new_tokens=8", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "judge=llm: Check_Answer 5-shot (model), mean of 2 runs at T=0.5" in captured.out
    score = json.loads((out / "score.json").read_text())
    assert score["n"] == 3 and score["dataset"] == "mine" and score["llm_judge"]["runs"] == 2
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["question_id"] for p in preds] == ["m0", "m1", "m2"]
    assert all(len(p["judge_verdicts"]) == 2 for p in preds)
    assert score["accuracy"] == pytest.approx(sum(p["judge_correct"] for p in preds) / 3)


def test_cli_eval_refusals_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "Who?", "answers": ["x"]}\n\n{"id": "b", "question": "Who?", "answers": [\n')
    model = str(tmp_path / "no-model")
    cases = [
        (["--dataset", str(bad), "--closed-book"], f"{bad}:3: malformed JSON"),
        (["--dataset", "bamboogle", "--closed-book", "--judge-model", model], "eval.judge_model: model directory not found"),
        (["--dataset", "bamboogle", "--closed-book", "--judge-model", str(tmp_path), "--set",
          "eval.judge_temperature=0"], "judge_temperature: 0 makes all 10 judge runs identical"),
    ]
    for extra, fragment in cases:
        assert main(["eval", "--model", model, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and fragment in err and err.count("\n") == 1, err


def test_a_run_checks_its_llm_judge_and_reserves_its_actor():
    """The driver builds the judge on its own actor: its config is checked before any work, and its
    CPUs and GPUs count in what the run reserves during an eval phase."""
    from rest.cluster import reserved

    with pytest.raises(ConfigError, match="set eval.judge_model"):
        check_judge(load_config(None, ["eval.judge=llm"]).eval)
    plain = load_config(None, [])
    judged = load_config(None, ["eval.judge=llm", "eval.judge_model=org/judge", "eval.judge_num_cpus=2",
                                "eval.judge_num_gpus=0.5"])
    assert check_judge(judged.eval).startswith("llm: Check_Answer 5-shot (judge)")
    got = {k: reserved(judged, 1)[k] - reserved(plain, 1)[k] for k in ("CPU", "GPU")}
    assert got == {"CPU": 2.0, "GPU": 0.5}
    assert reserved(judged, 0) == reserved(plain, 0)  # no eval pool alive: no judge either
