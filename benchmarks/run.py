"""``rest-react bench [--quick]``: every benchmark, side by side, into benchmarks/results.json.

Each benchmark measures ours and its baseline in the same run (these machines are
noisy, so only ratios taken together mean anything) and returns a flat dict; this
module adds the machine's facts, prints one table and writes the JSON.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results.json"


def _suites() -> dict[str, Callable[[bool], dict]]:
    from benchmarks import bench_engines, bench_rollout, bench_search

    # a trained toy policy makes multi-step episodes; without a built world, the random smoke model
    toy_built = Path("worlds/toy-0/world.json").exists()
    rollout_config = "configs/toy.yaml" if toy_built else "configs/smoke.yaml"
    return {
        "rollout": lambda quick: bench_rollout.run(quick, config=rollout_config),
        "engines": bench_engines.run,
        "search": bench_search.run,
    }


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _flat(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


def main(quick: bool = False, out: Path = RESULTS) -> int:
    results: dict = {"quick": quick, "machine": machine()}
    for name, suite in _suites().items():
        start = time.perf_counter()
        print(f"== {name} ...", flush=True)
        results[name] = suite(quick)
        results[name]["bench_seconds"] = time.perf_counter() - start
    rows: dict = {}
    for name in _suites():
        _flat(name, results[name], rows)
    width = max(map(len, rows))
    for key, value in rows.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0
