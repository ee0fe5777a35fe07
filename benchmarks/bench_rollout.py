"""Rollout speed: the episode runner against the same engine's raw batched generate.

The runner drives many episodes at once and makes one engine call per wave; its cost
over a bare engine is prompt building, parsing, search and the waves' ragged shapes.
We run the runner on a set of questions while recording every wave's prompts, then
replay exactly those prompt batches through (a) the same engine's ``generate`` and
(b) transformers' plain ``model.generate`` (``HFEngine.raw_generate``), and compare
generated tokens per second of wall time. Target: runner / raw >= 0.8. The plain
baseline has no stop strings, so each wave decodes as many tokens as that wave's
longest sample did (same work); decoding to the ``max_new_tokens`` cap instead
amortises the prefill over more tokens and is reported beside it.

    python -m benchmarks.bench_rollout [--quick] [--config configs/smoke.yaml]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from actors.engines.hf import HFEngine
from agent.runner import EpisodeRunner
from benchmarks.common import row as summary_row
from core.config import load_config
from evals.datasets import load_dataset
from rest.backends import build_engine, build_search


class RecordingEngine:
    """Passes calls through to an engine and keeps every wave's prompts."""

    def __init__(self, engine: HFEngine):
        self.engine, self.waves, self.longest, self.version = engine, [], [], engine.version

    def generate(self, prompts: Sequence[str], n: int, temperature: float, max_new_tokens: int, stop=None, seed=None):
        out = self.engine.generate(prompts, n, temperature, max_new_tokens, stop=stop, seed=seed)
        self.waves.append(list(prompts))
        self.longest.append(max(s.n_tokens for row in out for s in row))
        return out

    def load_weights(self, state, version):
        self.engine.load_weights(state, version)


def run(quick: bool = False, config: str = "configs/smoke.yaml", overrides: Sequence[str] = ()) -> dict:
    cfg = load_config(config, list(overrides))
    torch.set_num_threads(cfg.engine.threads)
    engine = build_engine(cfg)
    if not isinstance(engine, HFEngine):
        raise SystemExit("bench_rollout compares against transformers' generate: use engine.backend=hf")
    dataset = "toy-dev" if cfg.world.dir else "bamboogle"
    questions = load_dataset(dataset, cfg.world.dir or None)[: 16 if quick else 64]
    agent = replace(cfg.agent, max_episodes_in_flight=len(questions))
    recorder = RecordingEngine(engine)
    runner = EpisodeRunner(recorder, build_search(cfg), agent)
    engine.generate(["warm up"], n=1, temperature=1.0, max_new_tokens=2, seed=0)

    start = time.perf_counter()
    trajectories = runner.run(questions)
    runner_s = time.perf_counter() - start
    tokens = runner.stats.generated_tokens
    kwargs = {"n": agent.k_samples, "temperature": max(agent.temperature, 1e-3), "max_new_tokens": agent.max_new_tokens}

    start = time.perf_counter()
    engine_tokens = sum(
        s.n_tokens
        for i, wave in enumerate(recorder.waves)
        for row in engine.generate(wave, stop=["\n"], seed=i, **kwargs)
        for s in row
    )
    engine_s = time.perf_counter() - start
    # Baseline: plain generate on the same prompts, each wave decoding as long as that
    # wave's longest sample did (no stop strings there, so it would otherwise run to the cap).
    start = time.perf_counter()
    raw_tokens = 0
    for i, (wave, longest) in enumerate(zip(recorder.waves, recorder.longest, strict=True)):
        out = engine.raw_generate(wave, seed=i, **{**kwargs, "max_new_tokens": longest})
        raw_tokens += sum(len(ids) for row in out for ids in row)
    raw_s = time.perf_counter() - start
    start = time.perf_counter()
    capped_tokens = sum(
        len(ids) for i, wave in enumerate(recorder.waves) for row in engine.raw_generate(wave, seed=i, **kwargs) for ids in row
    )
    capped_s = time.perf_counter() - start

    stats = runner.stats
    result = {
        "config": config,
        "overrides": list(overrides),
        "dataset": dataset,
        "episodes": len(trajectories),
        "waves": len(recorder.waves),
        "prompts": sum(map(len, recorder.waves)),
        "runner_tok_s": tokens / runner_s,
        "engine_same_prompts_tok_s": engine_tokens / engine_s,
        "raw_generate_same_prompts_tok_s": raw_tokens / raw_s,
        "raw_generate_to_cap_tok_s": capped_tokens / capped_s,
        "runner_vs_raw": (tokens / runner_s) / (raw_tokens / raw_s),
        "runner_vs_engine": (tokens / runner_s) / (engine_tokens / engine_s),
        "runner_seconds": runner_s,
        "share_engine": stats.engine_seconds / runner_s,
        "share_search": stats.search_seconds / runner_s,
        "share_other": stats.other_seconds / runner_s,
        "end_reasons": dict(stats.episodes_by_end_reason),
    }
    result["summary"] = [
        summary_row(f"rollout: episode runner vs plain generate, same wave prompts and lengths ({len(questions)} "
                    f"episodes, K={agent.k_samples})", result["runner_tok_s"],
                    result["raw_generate_same_prompts_tok_s"], "tok/s", ">= 0.8"),
        summary_row("... plain generate decoding to the token cap instead", result["runner_tok_s"],
                    result["raw_generate_to_cap_tok_s"], "tok/s"),
    ]
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    config = args[args.index("--config") + 1] if "--config" in args else "configs/smoke.yaml"
    for key, value in run(quick="--quick" in args, config=config).items():
        print(f"{key:<34} {value:,.3f}" if isinstance(value, float) else f"{key:<34} {value}")
