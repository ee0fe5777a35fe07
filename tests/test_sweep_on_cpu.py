"""``rest-react sweep`` without launching runs: the seed syntax, the skip / resume / start decision,
the run command lines, and the table made from report.json files written here (test data, laid out
as the driver leaves its run dirs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from core.config import ConfigError
from rest.cli import main
from rest.sweep import (
    ISA_ENV,
    Point,
    Sweep,
    check_overrides,
    decide,
    last_error,
    parse_ints,
    run_command,
    validate,
)

TOY = str(Path(__file__).resolve().parents[1] / "configs" / "toy.yaml")


@pytest.mark.parametrize("text, want", [("0-5", [0, 1, 2, 3, 4, 5]), ("0,3,7", [0, 3, 7]), ("1-2,9", [1, 2, 9]),
                                        ("4", [4]), (" 2 - 3 , 2 ", [2, 3])])
def test_seed_syntax(text, want):
    assert parse_ints(text, "--seeds") == want


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "1,,2", "5-3", "1-2-3", "0x3"])
def test_bad_seed_syntax_is_one_config_error(text):
    with pytest.raises(ConfigError, match=r"^--seeds: "):
        parse_ints(text, "--seeds")
    with pytest.raises(ConfigError, match="must be >= 1"):
        parse_ints("0,1", "--threads", minimum=1)


def test_bad_sweep_arguments_exit_2_with_one_line(tmp_path, capsys):
    for argv in (["sweep", "--config", TOY, "--seeds", "3-1"],
                 ["sweep", "--config", TOY, "--seeds", "0", "--set", "world.seed=4"],
                 ["sweep", "--config", TOY, "--seeds", "0", "--set", "rest.nope=1"],
                 ["sweep", "--seeds", "0"],
                 ["sweep", "--table-only", "--name", "empty", "--runs-dir", str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # nothing was run or written


def write_run(runs: Path, name: str, acc: dict[str, list[float]], generations: int = 2,
              world: str = "worlds/none") -> Path:
    """A run dir with config.yaml and report.json as the driver leaves them after ``len(acc["L"]) - 1`` generations."""
    root = runs / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(f"rest:\n  generations: {generations}\n")
    done = len(acc["L"]) - 1
    evals = [{"gen": g, "model": m, "dataset": "toy-test", "accuracy": path[g] / 100, "n": 600}
             for g in range(done + 1) for m, path in acc.items()]
    (root / "report.json").write_text(json.dumps({"run": name, "generations_done": done, "evals": evals,
                                                  "setup": {"generations": generations, "world": world}}))
    return root


GOOD = {"XS": [8.3, 18.5, 22.5], "S": [20.0, 45.2, 44.7], "L": [21.3, 33.3, 48.0]}
WEAK = {"XS": [0.3, 0.0, 0.0], "S": [14.0, 3.2, 7.7], "L": [7.2, 5.2, 7.5]}


def test_skip_resume_or_start(tmp_path):
    assert decide(tmp_path / "absent") == "new"
    (tmp_path / "empty").mkdir()
    assert decide(tmp_path / "empty") == "new"
    assert decide(write_run(tmp_path, "done", GOOD)) == "done"
    assert decide(write_run(tmp_path, "half", {m: p[:2] for m, p in GOOD.items()})) == "resume"
    crashed = tmp_path / "crashed"  # died before its first report
    crashed.mkdir()
    (crashed / "config.yaml").write_text("rest:\n  generations: 2\n")
    assert decide(crashed) == "resume"
    (crashed / "report.json").write_text("{trunc")
    assert decide(crashed) == "resume"
    assert decide(write_run(tmp_path, "one-gen", {m: p[:2] for m, p in GOOD.items()}, generations=1)) == "done"


def test_run_commands():
    p = Point(3, 2)
    new = run_command("configs/toy.yaml", p, "sw-s3-t2", "runs", ["rest.generations=1"], "new")
    assert new[:4] == [sys.executable, "-m", "rest", "run"]
    assert new[4:] == ["--config", "configs/toy.yaml", "--set", "world.seed=3", "--set", "world.dir=worlds/toy-3-t2",
                       "--set", "world.threads=2", "--set", "learner.threads=2", "--set", "rest.generations=1",
                       "--name", "sw-s3-t2", "--runs-dir", "runs", "--no-progress"]
    resume = run_command("configs/toy.yaml", p, "sw-s3-t2", "runs", ["rest.generations=1"], "resume")
    assert resume[4:] == ["--resume", "--name", "sw-s3-t2", "--runs-dir", "runs", "--no-progress"]
    check_overrides(["agent.k_samples=8"])
    with pytest.raises(ConfigError, match="the sweep sets world.dir itself"):
        check_overrides(["world.dir=x"])
    validate(TOY, [p], ["learner.epochs=2"])
    with pytest.raises(ConfigError, match="world.threads: must be >= 1"):
        validate(TOY, [Point(0, 0)], [])
    assert last_error("[rest] gen 1 rollout ...\nerror: gen 1 rollout: boom (resume with: ...)\n\n") \
        == "error: gen 1 rollout: boom (resume with: ...)"
    assert last_error("Traceback...\nKilled\n") == "Killed" and last_error("") == ""


def test_the_table_from_run_dirs(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "sw-s0-t1", GOOD)
    write_run(runs, "sw-s1-t1", WEAK)
    write_run(runs, "sw-s2-t1", {m: p[:2] for m, p in GOOD.items()})  # unfinished
    write_run(runs, "other-s9-t1", GOOD)  # another sweep's run: not in this table
    (runs / "sw").mkdir()
    (runs / "sw" / "sweep.json").write_text(json.dumps({"config": "configs/toy.yaml", "overrides": [], "runs": [
        {"seed": 0, "threads": 1, "returncode": 0, "seconds": 1200.0},
        {"seed": 1, "threads": 1, "returncode": 0, "seconds": 1000.0},
        {"seed": 3, "threads": 1, "returncode": 1, "error": "error: world: out of disk | really", "seconds": 12.5},
    ]}))
    sweep = Sweep(str(runs), "sw")
    assert sweep.points == [Point(0, 1), Point(1, 1), Point(2, 1), Point(3, 1)]
    doc = sweep.table()
    assert doc == json.loads((runs / "sw" / "sweep.json").read_text())
    assert doc["machine"]["cpu"] and doc["machine"]["torch_cpu_capability"]
    rows = {r["seed"]: r for r in doc["runs"]}
    assert [rows[s]["status"] for s in range(4)] == ["done", "done", "unfinished", "failed"]
    assert rows[0]["accuracy"]["gen-2"] == {"XS": 22.5, "S": 44.7, "L": 48.0}
    assert rows[0]["verdict"]["met"] is True and rows[1]["verdict"]["met"] is False
    assert rows[1]["verdict"]["checks"]["l_gain"] is False and rows[2]["verdict"]["met"] is None
    assert rows[3]["verdict"] is None and rows[3]["returncode"] == 1 and rows[3]["seconds"] == 12.5

    s = doc["summary"]
    assert (s["finished"], s["runs"]) == (2, 4)
    assert s["mean"]["gen-2/L"] == pytest.approx((48.0 + 7.5) / 2, abs=0.01)
    assert s["sd"]["gen-2/L"] == pytest.approx(28.64, abs=0.01) and s["mean"]["seconds"] == 1100.0
    # seed 2 is unfinished (its generation targets are not yet measurable), seed 3 failed (it meets nothing)
    assert s["counts"]["warm_band"] == {"met": 2, "runs": 4, "not_measurable": 0}
    assert s["counts"]["l_gain"] == {"met": 1, "runs": 4, "not_measurable": 1}
    assert s["counts"]["all"] == {"met": 1, "runs": 4, "not_measurable": 1}

    md = (runs / "sw" / "sweep.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# Sweep sw" and lines[2].startswith("Machine: ") and "torch CPU capability" in lines[2]
    table = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| ---")]
    assert table[0].startswith("| seed | threads | status | warm XS | warm S | warm L | gen 1 XS |")
    assert table[0].endswith("| L gain | L rising | S between XS and L | XS vs warm L | all targets | run s |")
    assert table[1] == "| 0 | 1 | done | 8.3 | 20.0 | 21.3 | 18.5 | 45.2 | 33.3 | 22.5 | 44.7 | 48.0 " \
                       "| yes | yes | yes | yes | yes | yes | 1200 |"
    assert "| 2 | 1 | unfinished (gen 1 of 2) |" in table[3] and table[3].endswith("| yes | \u2014 | \u2014 | \u2014 "
                                                                                   "| \u2014 | \u2014 | \u2014 |")
    assert "failed (exit 1): error: world: out of disk \\| really" in table[4]
    assert table[5].startswith("| mean ± sd (2 finished) |") and "27.8 ± 28.6" in table[5]
    assert table[5].endswith("| 1100 ± 141 |")
    assert "- warm L in band: 2/4 runs" in lines and "- L gain: 1/4 runs (1 not yet measurable)" in lines
    assert "- all targets: 1/4 runs (1 not yet measurable)" in lines
    assert "- sw-s0-t1: target met: L 21.3 -> 33.3 -> 48.0 (+26.7), XS 22.5 >= 19.2, S 44.7 between" in lines
    assert "- sw-s3-t1: failed (exit 1): error: world: out of disk | really" in lines


def test_table_only_through_the_cli(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs, "sw-s0-t1", GOOD)
    write_run(runs, "sw-s0-t2", WEAK)
    assert main(["sweep", "--table-only", "--name", "sw", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["sweep sw: 2/2 runs finished, 0 failed, all targets met in 1/2", f"table: {runs / 'sw' / 'sweep.md'}"]
    doc = json.loads((runs / "sw" / "sweep.json").read_text())
    assert [(r["seed"], r["threads"], r["seconds"]) for r in doc["runs"]] == [(0, 1, None), (0, 2, None)]
    assert not (runs / "sw" / "logs").exists()  # nothing was run


class ScriptedSweep(Sweep):
    """A sweep whose runs are not launched: each "run" writes the run dir it would leave, or fails (``failing``)."""

    def __init__(self, *args, failing=(), **kw):
        super().__init__(*args, **kw)
        self.launched: list[list[str]] = []
        self.failing = set(failing)

    def _launch(self, cmd, log, env=None):
        self.launched.append(cmd)
        name = cmd[cmd.index("--name") + 1]
        if name in self.failing:
            return 1, "error: gen 1 rollout: boom", 2.0
        write_run(self.runs_dir, name, GOOD)
        return 0, "", 10.0


def test_a_sweep_skips_resumes_records_failures_and_goes_on(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "sw-s0-t1", GOOD)
    write_run(runs, "sw-s2-t1", {m: p[:2] for m, p in GOOD.items()})
    said: list[str] = []
    sweep = ScriptedSweep(str(runs), "sw", TOY, ["agent.k_samples=2"], failing={"sw-s1-t1"})
    doc = sweep.run([Point(s, 1) for s in range(4)], say=said.append)
    assert [(c[c.index("--name") + 1], "--resume" in c) for c in sweep.launched] == \
        [("sw-s1-t1", False), ("sw-s2-t1", True), ("sw-s3-t1", False)]
    assert "agent.k_samples=2" in sweep.launched[0] and "agent.k_samples=2" not in sweep.launched[1]
    assert said[0] == "sweep sw [1/4] seed 0, threads 1: sw-s0-t1 is finished, skipped"
    assert said[2] == "sweep sw [2/4] seed 1, threads 1: 2 s, failed (exit 1): error: gen 1 rollout: boom"
    assert said[-1].endswith("10 s, target met: L 21.3 -> 33.3 -> 48.0 (+26.7), XS 22.5 >= 19.2, S 44.7 between")
    assert [(r["status"], r["seconds"]) for r in doc["runs"]] == [("done", None), ("failed", 2.0), ("done", 10.0),
                                                                   ("done", 10.0)]
    assert doc["summary"]["counts"]["all"] == {"met": 3, "runs": 4, "not_measurable": 0}

    again = ScriptedSweep(str(runs), "sw", TOY, [])  # the same command later: only the failed run runs again
    doc = again.run([Point(s, 1) for s in range(4)], say=said.append)
    assert [c[c.index("--name") + 1] for c in again.launched] == ["sw-s1-t1"]
    assert doc["runs"][1]["status"] == "done" and doc["runs"][1]["seconds"] == 12.0
    assert doc["runs"][1]["returncode"] == 0 and doc["runs"][1]["error"] is None
    assert (runs / "sw" / "logs").is_dir()


def test_launch_logs_the_output_and_finds_the_error_line(tmp_path):
    log = tmp_path / "s0-t1.log"
    script = "import sys; print('[rest] gen 1 rollout ...'); print('error: boom', file=sys.stderr); sys.exit(3)"
    rc, error, seconds = Sweep._launch(Sweep.__new__(Sweep), [sys.executable, "-c", script], log)
    assert (rc, error) == (3, "error: boom") and seconds > 0
    rc, error, _ = Sweep._launch(Sweep.__new__(Sweep), [sys.executable, "-c", "print('fine')"], log)
    assert (rc, error) == (0, "fine")  # only this run's lines count
    text = log.read_text()
    assert text.count("=== ") == 2 and "[rest] gen 1 rollout ..." in text and "error: boom" in text


def test_a_forced_isa_reaches_the_runs_kernels_and_names_its_own_worlds(tmp_path, monkeypatch):
    """--isa avx2 / generic: the runs' torch dispatches those kernels (another rounding), their worlds are
    apart, a sweep keeps the ISA it started with, and the CPU's own ISA is refused (no other rounding)."""
    p = Point(3, 1)
    cmd = run_command("configs/toy.yaml", p, "sw-s3-t1", "runs", [], "new", "avx2")
    assert "world.dir=worlds/toy-3-t1-avx2" in cmd and "world.dir=worlds/toy-3-t1" in run_command(
        "configs/toy.yaml", p, "sw-s3-t1", "runs", [], "new")
    log = tmp_path / "isa.log"
    script = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    rc, line, _ = Sweep._launch(Sweep.__new__(Sweep), [sys.executable, "-c", script], log, ISA_ENV["generic"])
    assert (rc, line) == (0, "DEFAULT")
    validate(TOY, [p], [], "generic")
    with pytest.raises(ConfigError, match="--isa: one of native, avx2, generic"):
        validate(TOY, [p], [], "sse9")
    monkeypatch.setattr("rest.sweep.native_capability", lambda: "AVX2")  # as on an AVX2 CPU
    with pytest.raises(ConfigError, match=r"--isa avx2: this CPU's own kernels \(AVX2\).*--isa generic"):
        validate(TOY, [p], [], "avx2")
    monkeypatch.undo()
    sweep = Sweep(str(tmp_path / "runs"), "sw", TOY, [], isa="avx2")
    assert sweep.table()["isa"] == "avx2" and "forced" in sweep.machine["torch_cpu_capability"]
    with pytest.raises(ConfigError, match="ran with --isa avx2"):
        Sweep(str(tmp_path / "runs"), "sw", TOY, [], isa="native")
    assert Sweep(str(tmp_path / "runs"), "sw").isa == "avx2"  # --table-only keeps it
