"""Fault injection (issue 8, part 3): real kills, real servers, real full and read-only filesystems.

Every fault is injected into the real thing on a real local Ray cluster over the tiny
toy world (``configs/smoke_rest.yaml``, L and one student, 30 epochs per fine-tune so
a fit lasts long enough to be killed in), and each run that survives is compared with
an uninterrupted run of the same config: the same trajectories, growing batch, eval
predictions and scores, and checkpoint weights (sha256 of every tensor). Training
and sampling are seeded per task and per fit, so a resumed or retried run must match
it exactly.

- a sampler actor killed mid-rollout, then a learner rank killed mid-fine-tune: the
  pool replaces the sampler and the rollout is unchanged; the fine-tune fails at once
  with one line naming the dead rank, leaves no checkpoint and no actor behind, and
  ``--resume`` finishes the run as if nothing happened;
- the driver SIGKILLed in every phase (gen 0 eval and report, then each of gen 1's
  eight phases), each time resumed with ``rest-react run --resume``;
- the search server (``rest-react serve-search``) killed and restarted under a client;
- a full disk (a tiny tmpfs) and a read-only run dir (a tmpfs remounted read-only):
  one clear line, exit codes 1/2, nothing half-written. Mounting needs root with
  CAP_SYS_ADMIN; where that is missing those tests skip, and the file-size-limit test
  below still shows the writers' all-or-nothing behaviour.

The sampler kill alone is also in ``test_rest_loop.py`` (collective transport); here it
is compared with the uninterrupted run as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
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
from rest.batch import GrowingBatch
from rest.loop import ReSTLoop
from rest.runs import open_run

sys.path.insert(0, str(Path(__file__).parent))
from rest_fixtures import ROOT, SMOKE, WORLD, env, free_port, overrides, serve_search  # noqa: E402

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

#: the fault config: the smoke run with one student, 2 eval questions, fits of 30 epochs
FAULT_SETS = {"models.students": {"S": str(WORLD / "models" / "S-base")}, "eval.limit": 2, "learner.epochs": 30}
ALL_PHASES = [(0, "eval"), (0, "report")] + [(1, p) for p in PHASES]


def _overrides() -> list[str]:
    return overrides(**FAULT_SETS)


@pytest.fixture(scope="module")
def reference(cluster, runs) -> Path:
    """The uninterrupted run every faulted run must equal."""
    run, cfg = open_run(runs, "reference", load_config(SMOKE, _overrides()), resume=False)
    ReSTLoop(cfg, run, progress=False).run_all()
    return run.root


# ------------------------------------------------------------------ comparing runs


def _weights_sha(ckpt: Path) -> str:
    from safetensors.torch import load_file

    from learner.broadcast import weights_checksum

    return weights_checksum(load_file(str(ckpt / "model.safetensors")))


def outcome(root: Path) -> dict:
    """Everything a run produced that must not depend on how often it was interrupted."""
    state = RunState.load(root / "state.json")
    evals = {}
    for score in sorted((root / "evals").rglob("score.json")):
        s = json.loads(score.read_text())
        s.pop("seconds")
        evals[str(score.parent.relative_to(root))] = (s, read_jsonl(score.parent / "predictions.jsonl"))
    report = json.loads((root / "report.json").read_text())
    return {
        "done": sorted(state.done), "version": state.version,
        "trajectories": read_jsonl(root / "trajectories" / "gen-1.jsonl"),
        "batch": GrowingBatch(root / "batch").all(),
        "checkpoints": {c.name: (_weights_sha(c), json.loads((c / "training.json").read_text()))
                        for c in sorted((root / "checkpoints").iterdir())},
        "evals": evals,
        "report": sorted((r["gen"], r["model"], r["dataset"], r["accuracy"], r["n"]) for r in report["evals"]),
    }


def assert_same_run(root: Path, reference: Path) -> None:
    got, want = outcome(root), outcome(reference)
    assert want["batch"] and set(want["checkpoints"]) == {"L-gen1", "S-gen1"}, "the reference must be complete"
    for key in want:  # key by key, so a failure names what differs
        assert got[key] == want[key], f"{key} differs from the uninterrupted run"


def leftovers(root: Path) -> list[str]:
    """Temporary siblings of interrupted atomic writes still under ``root``."""
    return [str(p.relative_to(root)) for p in root.rglob(".*") if ".tmp" in p.name or ".old-" in p.name]


def wait_for_free_cpus(total: float, timeout_s: float = 60.0) -> float:
    """Wait until the cluster has ``total`` CPUs free again (every actor and placement group gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        free = ray.available_resources().get("CPU", 0.0)
        if free >= total - 1e-6:
            return free
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0.0)


# ------------------------------------------------------------------ sampler and learner rank killed


def kill_when_fitting(group, rank: int, killed: dict) -> None:
    """Kill learner ``rank`` right after the group's first fit has gone out to its ranks (its 30 epochs
    are seconds of work still ahead), recording when in ``killed["rank"]``."""
    start_fit = group.async_fit

    def start_then_kill(*args, **kwargs):
        refs = start_fit(*args, **kwargs)
        if "rank" not in killed:
            ray.kill(group.ranks[rank], no_restart=True)
            killed["rank"] = time.monotonic()
        return refs

    group.async_fit = start_then_kill


def test_sampler_then_learner_rank_killed_the_run_resumes_to_the_uninterrupted_result(cluster, runs, reference):
    run, cfg = open_run(runs, "ranks", load_config(SMOKE, _overrides()), resume=False)
    loop = ReSTLoop(cfg, run, progress=False)
    killed: dict[str, object] = {}

    def killer() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and "sampler" not in killed:  # a busy sampler, after one task
            pool = loop.cluster.started("samplers")
            busy = pool.in_flight() if pool is not None else {}
            if pool is not None and pool.stats["tasks"] >= 1 and busy:
                slot = next(iter(busy))
                ray.kill(pool.actors[slot], no_restart=True)
                killed["sampler"] = slot
            time.sleep(0.02)
        while time.monotonic() < deadline:  # then learner rank 1, as soon as the fit of L has gone out to it
            group = loop.cluster.started("learner")  # started with the rollout's other groups
            if group is not None and len(group.ranks) == 2:
                kill_when_fitting(group, 1, killed)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with pytest.raises(RuntimeError) as err:
        loop.run_all()
    failed_at = time.monotonic()
    thread.join(timeout=5)
    assert set(killed) == {"sampler", "rank"}, killed
    message = str(err.value)
    assert "\n" not in message and message.startswith("learner fit 'L' failed: learner rank 1 died"), message
    print(f"\nlearner rank killed -> generation failed {failed_at - killed['rank']:.1f} s later: {message[:160]}")

    state = RunState.load(run.state)
    assert [p for p in PHASES if state.is_done(1, p)] == ["rollout", "rank", "store"]
    assert state.done["1/rollout"]["resubmitted"] >= 1 and state.done["1/rollout"]["replaced"] >= 1
    assert not run.checkpoint("L", 1).exists() and leftovers(run.root) == []
    # the failed loop took every actor and the learner's placement group down with it
    assert wait_for_free_cpus(4.0) == pytest.approx(4.0)

    run, cfg = open_run(runs, "ranks", None, resume=True)
    ReSTLoop(cfg, run, progress=False).run_all()
    assert_same_run(run.root, reference)


# ------------------------------------------------------------------ the driver SIGKILLed in every phase


def _cli(gcs: str, runs: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "rest", "run", "--runs-dir", str(runs), "--address", gcs, "--no-progress", *args]


def _run_until(cmd: list[str], started: str | None, log: list[str], timeout_s: float = 400) -> int:
    """Run ``cmd``; SIGKILL it as soon as it prints the line starting with ``started`` (None: let it finish)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(timeout_s, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            log.append(line)
            if started is not None and line.startswith(started):
                proc.send_signal(signal.SIGKILL)
                break
        return proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_driver_sigkilled_in_every_phase_resumes_to_the_uninterrupted_result(cluster, runs, reference):
    name = "killed-everywhere"
    root = runs / name
    ref_seconds = {k: v["seconds"] for k, v in RunState.load(reference / "state.json").done.items()}
    start = ["--config", str(SMOKE), *sum((["--set", s] for s in _overrides()), []), "--name", name]
    log: list[str] = []
    landed: dict[str, str] = {}
    for gen, phase in ALL_PHASES:
        key = f"{gen}/{phase}"
        if RunState.load(root / "state.json").is_done(gen, phase):  # a missing file is a fresh state
            landed[key] = "ended before the signal"  # a phase of milliseconds can finish first
            continue
        args = ["--resume", "--name", name] if (root / "config.yaml").is_file() else start
        code = _run_until(_cli(cluster, runs, *args), f"[rest] gen {gen} {phase} ...", log)
        assert code == -signal.SIGKILL, "".join(log[-40:])
        point = RunState.load(root / "state.json").resume_point()
        landed[key] = "0/eval" if point == "start" else point
        if ref_seconds[key] >= 1.0:  # a phase that lasts was surely still running when the signal landed
            assert landed[key] == key, (key, landed[key])
        if (root / "metrics.jsonl").is_file():  # never half a line
            [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    print("\nSIGKILL at the start of -> the resume point it left:", json.dumps(landed))

    code = _run_until(_cli(cluster, runs, "--resume", "--name", name), None, log)
    assert code == 0, "".join(log[-60:])
    assert leftovers(root) == []
    metrics = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    assert {(m["gen"], m["phase"]) for m in metrics} == set(ALL_PHASES)
    assert_same_run(root, reference)


# ------------------------------------------------------------------ the search server killed and restarted


def test_search_server_killed_then_restarted(tmp_path):
    from actors.search.actor import SharedSearch
    from actors.search.http import HttpSearch
    from core.config import SearchConfig
    from core.search import SearchError

    corpus = WORLD / "corpus.jsonl.gz"
    port = free_port()
    url = f"http://127.0.0.1:{port}/retrieve"
    queries = ["The Sleeping Moon author", "Selby"]
    server = serve_search(corpus, port, tmp_path / "bm25")
    try:
        service = SharedSearch(SearchConfig(backend="http", url=url, timeout_s=2.0, retries=3))
        want = service.search(queries, 3)
        assert all(len(r) == 3 for r in want)

        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        t0 = time.monotonic()
        with pytest.raises(SearchError) as err:
            service.search(queries, 3)
        print(f"\nserver down: gave up after {time.monotonic() - t0:.2f} s: {err.value}")
        assert str(err.value) == f"search server {url} unreachable after 3 tries: connection refused"
        assert service.backend.stats == {"requests": 2, "retries": 2, "gave_up": 1}

        server = serve_search(corpus, port, tmp_path / "bm25")  # the same client recovers on the next call
        assert service.search(queries, 3) == want

        # killed again, restarted while a patient client is still retrying: that call succeeds
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        patient = HttpSearch(url, timeout_s=2.0, retries=60, backoff_s=0.1, max_backoff_s=0.5)
        result: dict = {}
        caller = threading.Thread(target=lambda: result.update(got=patient.search(queries, 3)), daemon=True)
        caller.start()
        time.sleep(1.0)
        assert caller.is_alive() and patient.stats["retries"] >= 1  # retrying against the dead port
        server = serve_search(corpus, port, tmp_path / "bm25")
        caller.join(timeout=60)
        assert result.get("got") == want
        print(f"restart while retrying: recovered after {patient.stats['retries']} retries")
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        server.stdout.close()


# ------------------------------------------------------------------ a full disk and a read-only run dir


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(fs: Path) -> None:
    """Use up every free byte of the filesystem at ``fs``."""
    with open(fs / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _copy_until(reference: Path, dest: Path, last_phase: str) -> None:
    """A copy of the reference run as it was when gen 1's ``last_phase`` had just finished."""
    keep = {k for k in ("0/eval", "0/report")} | {f"1/{p}" for p in PHASES[: PHASES.index(last_phase) + 1]}
    dest.mkdir(parents=True)
    shutil.copy2(reference / "config.yaml", dest / "config.yaml")
    for name in ("batch", "trajectories", "evals/gen-0"):
        shutil.copytree(reference / name, dest / name)
    lines = [x for x in (reference / "metrics.jsonl").read_text().splitlines()
             if f"{json.loads(x)['gen']}/{json.loads(x)['phase']}" in keep]
    (dest / "metrics.jsonl").write_text("".join(x + "\n" for x in lines))
    ref = RunState.load(reference / "state.json")
    RunState(dest / "state.json", done={k: v for k, v in ref.done.items() if k in keep}, version=0).save()


def test_disk_full_at_the_checkpoint_is_one_line_and_leaves_nothing_half_written(cluster, tmp_path, reference):
    fs = tmp_path / "fs"
    with tmpfs(fs, "2m"):
        _copy_until(reference, fs / "full", "store")
        before = tree_digest(fs / "full")
        used = sum(p.stat().st_size for p in (fs / "full").rglob("*") if p.is_file())
        assert used < 1_500_000  # the run so far fits; the 4 MB checkpoint of L does not
        done = subprocess.run(_cli(cluster, fs, "--resume", "--name", "full"), cwd=ROOT, env=env(),
                              capture_output=True, text=True, timeout=300)
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
        assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
        assert len(errors) == 1 and "No space left on device" in errors[0] and "--resume" in errors[0], errors
        print(f"\ndisk full: {errors[0][:200]}")
        after = tree_digest(fs / "full")
        assert after == before, "nothing the run had may change, and nothing half-written may appear"
        assert not (fs / "full" / "checkpoints" / "L-gen1").exists() and leftovers(fs / "full") == []


def test_a_full_disk_or_read_only_run_dir_fails_before_any_work(tmp_path, reference, capsys):
    from rest.cli import main

    new_run = ["run", "--config", str(SMOKE), *sum((["--set", s] for s in _overrides()), []),
               "--name", "new", "--no-progress"]
    fs = tmp_path / "fs"
    with tmpfs(fs, "1m"):
        (fs / "done").mkdir()
        for name in ("config.yaml", "state.json"):
            shutil.copy2(reference / name, fs / "done" / name)
        fill(fs)
        assert main([*new_run, "--runs-dir", str(fs)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --runs-dir: cannot write") \
            and "No space left on device" in err[0], err
        assert not (fs / "new" / "config.yaml").exists()
        assert main(["run", "--resume", "--name", "done", "--runs-dir", str(fs), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: --resume: cannot write in {fs / 'done'}: No space left on device"], err

        (fs / "filler").unlink()
        before = tree_digest(fs)
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        assert main(["run", "--resume", "--name", "done", "--runs-dir", str(fs), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: --resume: cannot write in {fs / 'done'}: Read-only file system"], err
        assert main([*new_run, "--runs-dir", str(fs)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--runs-dir: cannot" in err[0] and "Read-only file system" in err[0], err
        assert tree_digest(fs) == before


WRITERS = r'''
import json, os, resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from core.io import write_atomic
from core.state import RunState
from rest.batch import GrowingBatch
root = Path(sys.argv[1])
state = RunState(root / "state.json"); state.mark(0, "eval", {"seconds": 1.0})
write_atomic(root / "report.json", "{}\n")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # past the limit: EFBIG instead of a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
big = "x" * 8192
record = {"gen": 1, "question_id": "q", "trajectory_id": "q#0", "step_index": 0, "step_kind": "answer",
          "prompt": big, "samples": [["a", 1, -1.0]], "parse_ok": [True], "scores": None, "chosen": 0,
          "continued": 0, "policy_version": 0}
out = {}
for what, call in [("write_atomic", lambda: write_atomic(root / "report.json", big)),
                   ("batch", lambda: GrowingBatch(root / "batch").write_gen(1, [record])),
                   ("state", lambda: state.mark(0, "report", {"blob": big}))]:
    try:
        call(); out[what] = "written"
    except OSError as e:
        out[what] = e.strerror
out["state_in_memory"] = sorted(state.done)
print(json.dumps(out))
'''


def test_writers_are_all_or_nothing_past_a_file_size_limit(tmp_path):
    """No mount needed: RLIMIT_FSIZE makes every write past 4 KB fail (EFBIG), as a full disk would."""
    done = subprocess.run([sys.executable, "-c", WRITERS, str(tmp_path), str(ROOT)], capture_output=True,
                          text=True, timeout=120, env=env())
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"write_atomic": "File too large", "batch": "File too large", "state": "File too large",
                   "state_in_memory": ["0/eval"]}
    assert (tmp_path / "report.json").read_text() == "{}\n"  # the old content, whole
    assert sorted(RunState.load(tmp_path / "state.json").done) == ["0/eval"]
    assert not (tmp_path / "batch" / "gen-1.jsonl").exists()
    assert leftovers(tmp_path) == []
