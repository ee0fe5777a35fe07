"""Benchmarks and rollout profiling, the cheap parts on CPU: summary rows and their targets,
the pool's time accounting, the runner's timers, replicas started at once, and a real
``benchmarks.run`` of the search suite writing results.json (no timing is asserted).
"""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from actors.rankers import make_ranker
from actors.sampler import RankedRunner
from agent.trajectory import Question
from benchmarks import run as bench_run
from benchmarks.common import format_rows, parse_target, ratio, row
from benchmarks.gpu_check import main as gpu_check
from core.config import AgentConfig, RankerConfig
from core.engine import Sample
from rest.workers import MapProfile, PoolError, SamplerPool

# ------------------------------------------------------------ rows, ratios, targets


def test_row_has_both_figures_the_ratio_and_whether_the_target_is_met():
    r = row("scaling", 1800.0, 1000.0, "tok/s", ">= 1.7")
    assert r["ours"] == 1800.0 and r["baseline"] == 1000.0 and r["unit"] == "tok/s"
    assert r["ratio"] == pytest.approx(1.8) and r["value"] == r["ratio"] and r["met"] is True
    assert row("scaling", 1500.0, 1000.0, "tok/s", ">= 1.7")["met"] is False
    slow = row("learner", 130.0, 100.0, "ms/step", "<= 1.25")
    assert slow["ratio"] == pytest.approx(1.3) and slow["met"] is False
    assert row("no target", 1.0, 2.0, "s")["met"] is None


def test_share_rows_hold_the_target_to_the_given_value():
    r = row("sync share", 0.2, 40.0, "s", "<= 0.05", value=0.2 / 40.0)
    assert r["value"] == pytest.approx(0.005) and r["met"] is True
    assert row("sync share", 4.0, 40.0, "s", "<= 0.05", value=0.1)["met"] is False


def test_ratio_of_a_zero_baseline_is_nan_and_bad_targets_are_one_line_errors():
    assert math.isnan(ratio(1.0, 0.0))
    assert parse_target(" >= 1.7") == (">=", 1.7) and parse_target("<0.05") == ("<", 0.05)
    for bad in ("1.7", "=> 1.7", ">= fast", ""):
        with pytest.raises(ValueError, match="bad target"):
            parse_target(bad)


def test_format_rows_shows_every_row_and_flags_misses():
    text = format_rows([row("alpha", 2.0, 1.0, "x", ">= 1.5"), row("beta", 1.0, 1.0, "x", ">= 1.5")])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[2].startswith("alpha") and lines[2].endswith("yes")
    assert lines[3].startswith("beta") and lines[3].endswith("NO")


# ------------------------------------------------------------ the pool's profile


def _profile(**kw) -> MapProfile:
    base = dict(wall_s=10.0, replicas=2, tasks=5, busy_s=17.0, idle_tail_s=2.5, idle_gaps_s=0.5,
                driver_wait_s=9.9, covered=2,
                sampler={"rollout_seconds": 16.0, "rollout_cpu_seconds": 12.0, "run_seconds": 15.8,
                         "engine_seconds": 14.0, "search_seconds": 1.0, "rank_seconds": 0.5,
                         "other_seconds": 0.3, "engine_calls": 40.0, "prompts": 600.0, "generated_tokens": 9e3})
    return MapProfile(**{**base, **kw})


def test_breakdown_parts_add_up_to_the_replicas_capacity():
    b = _profile().breakdown()
    assert b["capacity_s"] == 20.0
    parts = ["engine_s", "search_s", "rank_s", "runner_other_s", "call_overhead_s", "idle_tail_s", "idle_gaps_s"]
    assert sum(b[p] for p in parts) == pytest.approx(20.0)
    assert sum(b["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert b["engine_s"] == 14.0 and b["runner_other_s"] == pytest.approx(0.5) and b["call_overhead_s"] == 1.0
    assert b["mean_prompts_per_engine_call"] == 15.0 and b["cpu_per_busy_second"] == 0.75


def test_breakdown_without_every_replicas_counters_is_unattributed():
    b = _profile(covered=1).breakdown()  # a replica was replaced mid-map: its counters are lost
    assert "engine_s" not in b and b["unattributed_s"] == 17.0
    assert b["unattributed_s"] + b["idle_tail_s"] + b["idle_gaps_s"] == pytest.approx(b["capacity_s"])


# ------------------------------------------------------------ replicas start at once


def test_replicas_start_concurrently():
    barrier = threading.Barrier(2, timeout=20)  # one by one, the first start would wait here alone and fail

    def make(slot: int) -> str:
        barrier.wait()
        return f"actor-{slot}"

    pool = SamplerPool(make, 2, call_timeout_s=10, max_task_retries=0)
    assert pool.actors == ["actor-0", "actor-1"]


def test_a_failed_start_fails_the_pool_with_one_line():
    from ray.exceptions import RayError

    def make(slot: int) -> str:
        if slot == 1:
            raise RayError("no resources")
        return "actor-0"

    with pytest.raises(PoolError, match="sampler 1 could not start"):
        SamplerPool(make, 2, call_timeout_s=10, max_task_retries=0)


# ------------------------------------------------------------ the runner's timers


class JunkEngine:
    """The model's text is the only fake: samples that never parse, so each episode is one ranked step."""

    version = 0

    def generate(self, prompts, n, temperature, max_new_tokens, stop=None, seed=None):
        return [[Sample(text=" ???", n_tokens=2, sum_logprob=-1.0 - i) for i in range(n)] for _ in prompts]

    def load_weights(self, state, version):
        self.version = version


def test_runner_time_splits_into_engine_search_rank_and_other():
    agent = AgentConfig(k_samples=3, prompt_style="zeroshot", max_episodes_in_flight=4)
    runner = RankedRunner(JunkEngine(), None, agent, make_ranker(RankerConfig(kind="random")))
    trajs = runner.run([Question(f"q{i}", f"Who wrote book {i}?") for i in range(6)])
    s = runner.stats
    assert len(trajs) == 6 and all(t.end_reason.startswith("unparseable") for t in trajs)
    assert s.rank_seconds > 0 and s.engine_seconds > 0 and s.run_seconds > 0
    assert s.run_seconds == pytest.approx(s.engine_seconds + s.search_seconds + s.rank_seconds + s.other_seconds)
    assert "rank_seconds" in s.to_dict() and "run_seconds" in s.to_dict()


# ------------------------------------------------------------ a real run of the cheapest suite


def test_bench_run_writes_results_with_machine_facts_and_summary(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert bench_run.main(quick=True, out=out, only=["search"]) == 0
    results = json.loads(out.read_text())
    assert results["quick"] is True and results["suites"] == ["search"]
    m = results["machine"]
    assert m["cpus"] >= 1 and "load_before" in m and "load_after" in m and m["cpu_model"]
    assert results["search"]["bench_seconds"] > 0 and results["search"]["passages"] > 1000
    rows = results["summary"]
    assert rows == results["search"]["summary"] and len(rows) == 4
    load = results["search"]["load"]
    for server in ("fastapi", "stdlib"):  # every request of the load test was sent and counted
        assert load[server]["requests"] == load["clients"] * load["requests_per_client"]
    for r in rows:
        assert set(r) == {"what", "ours", "baseline", "unit", "ratio", "value", "target", "met"}
        assert r["ours"] > 0 and r["baseline"] > 0 and r["ratio"] == pytest.approx(r["ours"] / r["baseline"])
    printed = capsys.readouterr().out
    assert rows[0]["what"][:40] in printed and f"wrote {out}" in printed


def test_unknown_suite_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark suite 'gpu'"):
        bench_run.main(quick=True, out=tmp_path / "r.json", only=["search", "gpu"])
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_check_without_a_gpu_says_it_skipped_and_exits_0(capsys):
    assert gpu_check([]) == 0
    assert capsys.readouterr().out == "gpu-check: skipped: no CUDA device (torch.cuda.is_available() is False)\n"
