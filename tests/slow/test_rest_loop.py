"""The ReST driver end to end on a real local Ray cluster, real DeepSpeed (gloo) and tiny models.

One generation over 6 training questions of the tiny toy world, 2 samplers, 2 learner
ranks: a complete run dir with both weight transports, a sampler killed mid-rollout,
the driver SIGKILLed after the rank phase and resumed to the same batch, a stale
sampler refusing work, and a broadcast changing what the samplers sample.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from core.config import load_config
from core.io import read_jsonl
from core.state import PHASES, RunState
from learner.selection import distinct_examples
from rest.batch import GrowingBatch
from rest.loop import ReSTLoop, RunError
from rest.runs import open_run

sys.path.insert(0, str(Path(__file__).parent))
from rest_fixtures import ROOT, SMOKE, env, overrides  # noqa: E402

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # token auth breaks local clusters (ENVIRONMENT.md)

MODELS = ("L", "S", "XS")


def _run_in_process(runs: Path, name: str, on_loop=None, **sets):
    cfg = load_config(SMOKE, overrides(**sets))
    run, cfg = open_run(runs, name, cfg, resume=False)
    loop = ReSTLoop(cfg, run, progress=False)
    if on_loop is not None:
        on_loop(loop)
    return run, loop.run_all()


def _check_complete(run, report: dict, models=MODELS) -> None:
    state = RunState.load(run.state)
    assert state.remaining_generations(1) == [] and state.version == 1
    for name in ("config.yaml", "state.json", "metrics.jsonl", "report.json", "batch/gen-1.jsonl",
                 "trajectories/gen-1.jsonl"):
        assert (run.root / name).is_file(), name
    for model in models:
        ckpt = run.checkpoint(model, 1)
        assert (ckpt / "config.json").is_file() and list(ckpt.glob("*.safetensors")), ckpt
    assert {(r["gen"], r["model"]) for r in report["evals"]} == {(g, m) for g in (0, 1) for m in models}
    assert all(r["dataset"] == "toy-test" and r["n"] == 4 and 0 <= r["accuracy"] <= 1 for r in report["evals"])
    for score in run.root.glob("evals/gen-*/*/toy-test/score.json"):  # eval settings: one greedy sample per step
        stats = json.loads(score.read_text())["runner_stats"]
        assert stats["samples"] == stats["llm_steps"] > 0, (score, stats)
    assert set(report["timings"]["gen-1"]) == set(PHASES) - {"report"}  # written by the report phase itself
    lines = [json.loads(x) for x in run.metrics.read_text().splitlines()]
    assert [(x["gen"], x["phase"]) for x in lines] == [(0, "eval"), (0, "report")] + [(1, p) for p in PHASES]
    trajectories = read_jsonl(run.trajectories(1))
    assert sorted(t["question_id"] for t in trajectories) == sorted({t["question_id"] for t in trajectories})
    assert len(trajectories) == 6
    assert all(s["scores"] is not None for t in trajectories for s in t["steps"] if s["samples"])
    records = GrowingBatch(run.batch).all()
    assert records and all(r["policy_version"] == 0 and r["parse_ok"][r["chosen"]] for r in records)


def test_smoke_run_end_to_end_object_store(cluster, runs):
    run, report = _run_in_process(runs, "plain")
    _check_complete(run, report)
    state = RunState.load(run.state)
    assert state.done["1/broadcast"]["transport"] == "object_store"
    batch = GrowingBatch(run.batch)
    fit = state.done["1/finetune"]
    assert fit["examples"] == len(distinct_examples(batch.examples()))
    assert fit["examples"] + fit["repeats_dropped"] == len(batch.all())


def test_collective_transport_and_a_sampler_killed_mid_rollout(cluster, runs):
    killed: list[int] = []

    def killer(loop: ReSTLoop) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pool = loop.cluster.started("samplers")
            busy = pool.in_flight() if pool is not None else {}
            if pool is not None and pool.stats["tasks"] >= 1 and busy:
                slot = next(iter(busy))
                ray.kill(pool.actors[slot], no_restart=True)
                killed.append(slot)
                return
            time.sleep(0.05)

    def start(loop):
        threading.Thread(target=killer, args=(loop,), daemon=True).start()

    s_base = str(ROOT / ".cache/worlds/tiny-0/models/S-base")
    run, report = _run_in_process(runs, "killed", on_loop=start, **{
        "learner.transport": "collective", "rest.questions_per_task": 1, "models.students": {"S": s_base},
        # the paper's Check_Answer judge scores every eval, on its own actor (a real tiny model's text)
        "eval.judge": "llm", "eval.judge_model": s_base, "eval.judge_runs": 2, "eval.judge_num_cpus": 0.25})
    assert killed, "the killer thread never saw a busy sampler"
    _check_complete(run, report, models=("L", "S"))
    state = RunState.load(run.state)
    assert state.done["1/rollout"]["resubmitted"] >= 1 and state.done["1/rollout"]["replaced"] >= 1
    assert state.done["1/broadcast"]["transport"] == "collective"
    for e in report["evals"]:
        assert e["judge"].startswith("llm: Check_Answer 5-shot (S-base), mean of 2 runs") and e["judge_runs"] == 2
        assert 0 <= e["exact_match"] <= 1 and e["judge_no_verdict"] >= 0
        lines = read_jsonl(run.eval_dir(e["gen"], e["model"], "toy-test") / "predictions.jsonl")
        assert all(len(p["judge_verdicts"]) == 2 for p in lines)
    assert set(state.done["1/eval"]["exact_match"]) == {"L/toy-test", "S/toy-test"}
    assert not [a for a in ray.util.list_named_actors() if "eval-judge" in a]  # stopped with its phase


def _cli(runs: Path, gcs: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "rest", "run", "--runs-dir", str(runs), "--address", gcs, "--no-progress", *args]


def test_driver_killed_after_rank_resumes_to_the_same_batch(cluster, runs):
    name = "resumed"
    args = ["--config", str(SMOKE), "--name", name]  # the config as the README runs it
    log = open(runs / f"{name}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(_cli(runs, cluster, *args), cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT)
    state_path = runs / name / "state.json"
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state_path.is_file() and "1/rank" in state_path.read_text():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        assert proc.wait(timeout=30) == -signal.SIGKILL, (runs / f"{name}.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    state = RunState.load(state_path)
    assert state.is_done(1, "rank") and not state.generation_done(1)

    done = subprocess.run(_cli(runs, cluster, "--resume", "--name", name), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming at 1/" in done.stdout
    resumed = runs / name
    report = json.loads((resumed / "report.json").read_text())
    _check_complete(open_run(runs, name, None, resume=True)[0], report)
    # nothing lost or duplicated, and the same records as the uninterrupted run (sampling is seeded per task)
    plain = GrowingBatch(runs / "plain" / "batch").all()
    assert plain, "the uninterrupted run must run first (test order)"
    assert GrowingBatch(resumed / "batch").all() == plain


def test_a_stale_sampler_refuses_work_and_a_broadcast_changes_its_outputs(cluster, runs, policy):
    import torch
    from safetensors.torch import load_file

    from actors.sampler import SamplerActor
    from agent.trajectory import Question
    from core.errors import StaleWeights
    from learner.group import LearnerGroup
    from learner.selection import to_example

    cfg = load_config(SMOKE)
    questions = [Question("q1", "Where was the person who wrote The Sleeping Moon born?"),
                 Question("q2", "Who founded the company that published The Narrow House?")]
    sampler = SamplerActor.options(num_cpus=0.25).remote(cfg, questions, None, 0, str(policy))
    before = ray.get(sampler.rollout.remote(["q1", "q2"], 0, 1, 7), timeout=120)
    with pytest.raises(StaleWeights, match="holds weights v0, driver expects v1"):
        ray.get(sampler.rollout.remote(["q1"], 1, 1, 7), timeout=120)

    examples = [to_example(r) for r in GrowingBatch(runs / "plain" / "batch").all()]
    assert examples, "the end-to-end test must run first (test order)"
    with LearnerGroup(cfg.learner) as learner:
        fit = learner.fit(str(policy), examples, str(runs / "stale-L"), seed=3, name="L")
        old = load_file(str(next(policy.glob("*.safetensors"))))
        new = load_file(str(next((runs / "stale-L").glob("*.safetensors"))))
        assert any(not torch.equal(old[k], new[k]) for k in old), "a learner step must change the weights"
        assert fit.steps >= 1
        res = learner.broadcast([sampler], version=1)
    assert res.version == 1 and ray.get(sampler.ping.remote(), timeout=30) == 1
    after = ray.get(sampler.rollout.remote(["q1", "q2"], 1, 1, 7), timeout=120)

    def logprobs(trajs):
        return [s["sum_logprob"] for t in trajs for step in t["steps"] for s in step["samples"]]

    assert {t["policy_version"] for t in after} == {1}
    assert logprobs(after) != logprobs(before)
    with pytest.raises(StaleWeights):
        ray.get(sampler.rollout.remote(["q1"], 0, 1, 7), timeout=120)
    ray.kill(sampler)


def test_an_llm_judge_ranker_that_cannot_answer_fails_the_rank_phase(cluster, runs):
    """A judge whose verdicts do not parse would leave every pick to perplexity: the rank phase stops with
    one line (the share, the limit, an example) and writes nothing, so a rerun ranks again."""
    judge = str(ROOT / ".cache/worlds/tiny-0/models/S-base")  # a real tiny model: it writes no verdicts
    with pytest.raises(RunError) as failed:
        _run_in_process(runs, "mute-judge", **{"ranker.kind": "llm-judge", "ranker.judge_model": judge,
                                               "ranker.judge_max_new_tokens": 16})
    line = str(failed.value)
    assert line.startswith("gen 1 rank: the llm-judge ranker gave no usable verdict on ") and "\n" not in line
    assert "> ranker.max_unparsed_rate 20%" in line
    run = runs / "mute-judge"
    state = RunState.load(run / "state.json")
    assert state.is_done(1, "rollout") and not state.is_done(1, "rank")
    assert all(s.get("scores") is None for t in read_jsonl(run / "trajectories" / "gen-1.jsonl") for s in t["steps"])
