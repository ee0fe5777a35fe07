"""Learner: the DeepSpeed step (``learner.group`` -> ``learner.deepspeed_rank``) against a plain PyTorch AdamW loop.

Same model (the tiny toy world's L-base, L size), same per-step examples (that world's
demonstration steps: realistic prompt lengths), same batches, fp32, one torch thread
each: the DeepSpeed side is one learner rank (a Ray actor) wrapping the model with
``deepspeed.initialize`` at ZeRO stage 0, 2 and 3; the plain side is
``learner.trainer.train`` (AdamW, clip, the shared ``sft_loss``) in this process. Time
per optimizer step covers the training loop only (not loading, wrapping or saving).
One rank is what makes "the same batch" exact: with W ranks each would take 1/W of
every batch, and the comparison would measure the split, not DeepSpeed's overhead.
The plain loop runs before and after the DeepSpeed fits; the faster of the two counts
(the machine is shared). Target: DeepSpeed / plain <= 1.25 at every stage.

    python -m benchmarks.bench_learner [--quick]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

from agent.trajectory import Trajectory
from benchmarks.common import fixtures, local_ray, row
from core.config import LearnerConfig
from learner.group import LearnerGroup
from learner.selection import to_example
from learner.trainer import TrainConfig, train
from rest.batch import step_records

TARGET = "<= 1.25"
STAGES = (0, 2, 3)


def _examples(world: Path, n: int) -> list:
    """``n`` per-step examples from the world's demonstrations (cycled if there are fewer)."""
    import gzip
    import json


    out = []
    for path in sorted((world / "demos").glob("aux*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                traj = Trajectory.from_dict(json.loads(line)["trajectory"])
                out += [to_example(r) for r in step_records(1, traj)]
                if len(out) >= n:
                    return out[:n]
    return [out[i % len(out)] for i in range(n)]


def _plain(model_dir: Path, examples: list, batch: int, max_len: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer


    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32", use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=batch, warmup_steps=1, weight_decay=0.0, grad_clip=1.0,
                      max_len=max_len, precision="fp32", num_threads=1, seed=0)
    res = train(model, tok, examples, cfg, progress=False)
    return {"steps": res.steps, "tokens": res.tokens, "seconds": res.seconds, "step_ms": 1000 * res.seconds / res.steps}


def run(quick: bool = False) -> dict:
    batch, steps, max_len = (16, 12, 320) if quick else (32, 30, 320)
    world = fixtures().ensure_world()
    model_dir = world / "models" / "L-base"
    examples = _examples(world, batch * steps)
    cfg = LearnerConfig(world_size=1, num_cpus_per_rank=1.0, epochs=1, batch_size=batch, max_len=max_len,
                        warmup_steps=1, weight_decay=0.0, grad_clip=1.0, lr=1e-3, precision="fp32", timeout_s=900)
    result: dict = {"model": f"{world.name} L-base", "batch": batch, "steps": steps, "max_len": max_len, "threads": 1, "ranks": 1}
    with tempfile.TemporaryDirectory(prefix="bench-learner-") as tmp, local_ray():
        plain = [_plain(model_dir, examples, batch, max_len)]
        learner = LearnerGroup(cfg, control_timeout_s=300)
        try:
            for stage in STAGES:
                learner.cfg = dataclasses.replace(cfg, zero_stage=stage)
                fit = learner.fit(str(model_dir), examples, str(Path(tmp) / f"zero{stage}"), seed=0, name="L")
                result[f"zero{stage}"] = {"steps": fit.steps, "seconds": fit.seconds,
                                          "step_ms": 1000 * fit.seconds / fit.steps, "tok_s": fit.tokens_per_s}
        finally:
            learner.shutdown()
        plain.append(_plain(model_dir, examples, batch, max_len))
    result["plain"] = best = min(plain, key=lambda p: p["step_ms"])
    result["plain_step_ms_runs"] = [round(p["step_ms"], 2) for p in plain]
    if any(result[f"zero{s}"]["steps"] != best["steps"] for s in STAGES):
        raise RuntimeError(f"learner: DeepSpeed and the plain loop ran different step counts ({result})")
    result["summary"] = [
        row(f"learner: DeepSpeed ZeRO-{s} step vs plain AdamW loop (L, batch {batch}, 1 rank, 1 thread)",
            result[f"zero{s}"]["step_ms"], best["step_ms"], "ms/step", TARGET)
        for s in STAGES
    ]
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=1))
