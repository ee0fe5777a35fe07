"""``rest-react bench [--quick]``: every benchmark, side by side, into benchmarks/results.json.

Each suite measures ours and its baseline in the same run (these machines are noisy,
so only ratios taken together mean anything) and returns its details plus ``summary``
rows (both absolute figures, the ratio, the target). This module runs the suites in one
local Ray cluster, adds the machine's facts (cores, CPU, memory, load average before and
after: the build machines are shared), prints the summary table and writes the JSON.
A suite that fails is recorded with its one-line error; the others still run (exit 1).

    python -m benchmarks.run [--quick] [--only scaling,learner] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import bench_rollout
from benchmarks.common import TOY_WORLD, fixtures, format_rows, load_average, local_ray

RESULTS = Path(__file__).resolve().parent / "results.json"

#: suites in the order they run (cheap ones first)
SUITES = ("search", "rollout", "engines", "scaling", "weight_sync", "learner")
#: suites that need the Ray cluster
RAY_SUITES = {"scaling", "weight_sync", "learner"}


def _rollout(quick: bool) -> dict:
    """The rollout suite on a policy that makes multi-step episodes (toy L-warm, else the tiny world's)."""
    sets = ["agent.k_samples=4", "agent.max_episodes_in_flight=64"]
    if (TOY_WORLD / "world.json").is_file():
        return bench_rollout.run(quick, config="configs/toy.yaml", overrides=sets)
    fx = fixtures()
    fx.ensure_world()
    return bench_rollout.run(quick, config=str(fx.SMOKE), overrides=sets)


def suite(name: str) -> Callable[[bool], dict]:
    """The ``run(quick)`` function of suite ``name``."""
    import importlib

    if name == "rollout":
        return _rollout
    if name not in SUITES:
        raise ValueError(f"unknown benchmark suite {name!r} (known: {', '.join(SUITES)})")
    return importlib.import_module(f"benchmarks.bench_{name}").run


def machine() -> dict:
    """Facts about where the figures were taken."""
    import torch

    facts = {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_before": load_average(),
    }
    try:
        import vllm

        facts["vllm"] = vllm.__version__
    except ImportError:
        facts["vllm"] = None
    return facts


def _ray_version() -> str:
    import ray

    return ray.__version__


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
        return round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        return None


def main(quick: bool = False, out: Path = RESULTS, only: Sequence[str] | None = None) -> int:
    """Run the suites (``only``: a subset, in the usual order), print the table, write ``out``."""
    names = [n for n in SUITES if only is None or n in only]
    for name in only or ():
        suite(name)  # an unknown name fails here, before anything runs
    results: dict = {"quick": quick, "suites": names, "machine": machine()}
    start = time.perf_counter()
    failed = []
    with contextlib.ExitStack() as stack:
        for name in names:
            if name in RAY_SUITES and "ray" not in results["machine"]:
                stack.enter_context(local_ray())  # started late: vLLM's engines need no Ray in the driver
                results["machine"]["ray"] = _ray_version()
            print(f"== {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                results[name] = suite(name)(quick)
            except Exception as e:  # one suite's failure is reported, the others still run
                text = " ".join(str(e).split())[:300] or type(e).__name__
                results[name] = {"error": f"{type(e).__name__}: {text}", "summary": []}
                failed.append(name)
                print(f"!! {name} failed: {results[name]['error']}", flush=True)
            results[name]["bench_seconds"] = round(time.perf_counter() - t0, 2)
            print(f"== {name}: {results[name]['bench_seconds']:.0f} s", flush=True)
    results["total_seconds"] = round(time.perf_counter() - start, 2)
    results["machine"]["load_after"] = load_average()
    results["summary"] = [r for name in names for r in results[name]["summary"]]
    print(format_rows(results["summary"]))
    m = results["machine"]
    print(f"machine: {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, load average "
          f"{m['load_before']} before / {m['load_after']} after; {results['total_seconds']:.0f} s in all")
    out = Path(out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under 5 minutes")
    parser.add_argument("--only", default="", help="comma-separated suites: " + ", ".join(SUITES))
    parser.add_argument("--out", default=str(RESULTS), help="where to write the JSON")
    args = parser.parse_args()
    raise SystemExit(main(args.quick, Path(args.out), [s for s in args.only.split(",") if s] or None))
