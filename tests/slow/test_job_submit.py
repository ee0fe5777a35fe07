"""The cluster launch path: `ray start --head`, `ray job submit ... -- rest-react run`, Prometheus metrics.

The test starts its own head node (every port chosen free, its own temp dir, its own
process group) and stops only that node: ``ray stop`` would kill every Ray process of
the user on the machine, including other sessions' clusters.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rest_fixtures import ROOT, SMOKE, WORLD, ensure_world, env, free_port, overrides  # noqa: E402

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
METRICS = ("ray_rest_react_episodes", "ray_rest_react_generated_tokens", "ray_rest_react_learner_loss")
EXCLUDES = [".venv", ".venv-*", ".cache", "runs", "worlds", ".git", "**/__pycache__", ".pytest_cache",
            ".ruff_cache", ".hypothesis", "*.log", "benchmarks/results.json"]


def _ours(temp_dir: str) -> list[int]:
    """Pids of processes whose command line names this cluster's temp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def head():
    ensure_world()  # built before the cluster, outside the job's time limit
    temp_dir = tempfile.mkdtemp(prefix="rrjob", dir="/tmp")  # short: Ray's socket paths are length-limited
    ports = {name: free_port() for name in ("gcs", "dashboard", "metrics", "client", "agent_http", "agent_grpc",
                                            "runtime_env", "node_manager", "object_manager")}
    cmd = [RAY, "start", "--head", "--block", "--port", str(ports["gcs"]),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports["dashboard"]),
           "--metrics-export-port", str(ports["metrics"]), "--ray-client-server-port", str(ports["client"]),
           "--dashboard-agent-listen-port", str(ports["agent_http"]),
           "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
           "--runtime-env-agent-port", str(ports["runtime_env"]),
           "--node-manager-port", str(ports["node_manager"]), "--object-manager-port", str(ports["object_manager"]),
           "--num-cpus", "2", "--temp-dir", temp_dir, "--disable-usage-stats"]
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        _wait_for(lambda: _get(f"{url}/api/version"), 240, "the head's dashboard")
        yield {"url": url, "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics", "temp_dir": temp_dir,
               "gcs": f"127.0.0.1:{ports['gcs']}"}
    finally:
        _stop(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop this head only: its process group, then any process still naming its temp dir."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while _ours(temp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _ours(temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()
    except OSError:
        return None


def _wait_for(probe, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"{what} not ready within {timeout_s:.0f} s")


def test_job_submit_runs_rest_and_exports_metrics(head, tmp_path):
    runs = tmp_path / "runs"
    sets = overrides(**{"world.dir": str(WORLD), "search.cache_dir": str(ROOT / ".cache/bm25")})
    entrypoint = [sys.executable, "-m", "rest", "run", "--config", str(SMOKE.relative_to(ROOT)),
                  *sum((["--set", s] for s in sets), []), "--name", "job", "--runs-dir", str(runs),
                  "--address", "auto", "--no-progress"]
    submit = [RAY, "job", "submit", "--address", head["url"], "--submission-id", "rest-react-smoke",
              "--working-dir", ".", "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--no-wait",
              "--", *entrypoint]
    out = subprocess.run(submit, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head["url"])
    deadline = time.monotonic() + 420
    status = client.get_job_status("rest-react-smoke")
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status("rest-react-smoke")
    logs = client.get_job_logs("rest-react-smoke")
    assert status == JobStatus.SUCCEEDED, f"{status}\n{logs[-4000:]}"
    report = json.loads((runs / "job" / "report.json").read_text())
    assert {(r["gen"], r["model"]) for r in report["evals"]} == {(g, m) for g in (0, 1) for m in ("L", "S", "XS")}

    def scraped():  # counters export as NAME_total, the loss histogram as NAME_bucket/_sum/_count
        lines = [ln for ln in (_get(head["metrics"]) or "").splitlines() if 'run="job"' in ln]
        return lines if all(any(ln.startswith(name) for ln in lines) for name in METRICS) else None

    lines = _wait_for(scraped, 45, f"{', '.join(METRICS)} on {head['metrics']}")
    episodes = [float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith("ray_rest_react_episodes_total{")]
    assert sum(episodes) == 6.0  # 6 questions x 1 trajectory
    steps = [float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith("ray_rest_react_learner_loss_count{")]
    assert sum(steps) >= 3  # L, S and XS fine-tuned at least one step each


def test_a_run_too_big_for_the_cluster_is_refused_at_once_not_left_waiting(head, tmp_path):
    """The head declares 2 CPUs; samplers of 1 CPU each make the run need 4.7 at once: one line, exit 2."""
    sets = overrides(**{"world.dir": str(WORLD), "rest.sampler_num_cpus": 1.0})
    cmd = [sys.executable, "-m", "rest", "run", "--config", str(SMOKE), *sum((["--set", s] for s in sets), []),
           "--name", "too-big", "--runs-dir", str(tmp_path / "runs"), "--address", head["gcs"], "--no-progress"]
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the cluster has 2 CPUs but this run holds 4.7 at once"), out.stderr
    assert "ray start --head --num-cpus 5" in last
    assert not (tmp_path / "runs" / "too-big" / "batch").exists()
