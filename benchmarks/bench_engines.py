"""Rollout engine speed: generated tokens/s, measured side by side in one run.

Two ratios, per model size of the toy family (random weights: speed does not
depend on what the weights say):

* ours / plain: ``HFEngine.generate`` (one prefill per prompt, KV cache fanned out
  n times, log-probs kept) against transformers' own ``model.generate`` with
  ``num_return_sequences=n`` on the same left-padded batches (``raw_generate``).
* vLLM / ours: ``VLLMEngine`` against ``HFEngine``, at XS/S/L and at M10, when
  vllm imports (otherwise the result says "vllm unavailable").

Every engine runs on one thread / one core, as a sampler actor does on a small
CPU. Neither stop strings nor eos shorten the samples much (random weights), so
both sides generate about ``max_new_tokens`` per sample. Run it as
``python -m benchmarks.bench_engines [--quick]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from actors.engines.hf import HFEngine
from toyworld.modelzoo import count_params, init_model, train_tokenizer

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hotpotqa_train_sample.jsonl"


def _prompts(count: int) -> list[str]:
    """``count`` prompts of mixed length (about 40 to 300 tokens), built from the repo's HotpotQA sample."""
    lines = [
        json.loads(line)["question"] for _, line in zip(range(4 * count + 40), CORPUS.open(), strict=False)
    ]
    return ["\n".join(lines[i : i + 1 + (i % 12)]) + "\nAnswer:" for i in range(count)]


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _hf_vs_plain(engine: HFEngine, prompts: list[str], n: int, max_new: int) -> dict:
    engine.generate(prompts[:2], n=2, temperature=1.0, max_new_tokens=4, seed=0)  # warm-up
    ours, t_ours = _timed(engine.generate, prompts, n=n, temperature=1.0, max_new_tokens=max_new, seed=0)
    plain, t_plain = _timed(
        engine.raw_generate, prompts, n=n, temperature=1.0, max_new_tokens=max_new, seed=0
    )
    tok_ours = sum(s.n_tokens for row in ours for s in row)
    tok_plain = sum(len(ids) for row in plain for ids in row)
    return {
        "hf_tok_s": tok_ours / t_ours,
        "plain_generate_tok_s": tok_plain / t_plain,
        "hf_vs_plain": (tok_ours / t_ours) / (tok_plain / t_plain),
    }


def _vllm_vs_hf(
    model_dir: Path, hf_tok_s: float, prompts: list[str], n: int, max_new: int, max_batch: int
) -> dict:
    from actors.engines.vllm_engine import VLLMEngine

    engine, t_start = _timed(VLLMEngine, model_dir, max_batch=max_batch, kv_cache_gib=1.0, cpu_bind="0")
    try:
        engine.generate(prompts[:2], n=2, temperature=1.0, max_new_tokens=4, seed=0)  # warm-up
        out, t = _timed(engine.generate, prompts, n=n, temperature=1.0, max_new_tokens=max_new, seed=0)
    finally:
        engine.close()
    tok_s = sum(s.n_tokens for row in out for s in row) / t
    return {"vllm_tok_s": tok_s, "vllm_vs_hf": tok_s / hf_tok_s, "vllm_start_s": t_start}


def _vllm_status() -> str:
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        return f"vllm unavailable ({str(e).splitlines()[0] if str(e) else 'ImportError'})"
    return "available"


def run(quick: bool = False) -> dict:
    """Measure and return the table as a dict (``sizes`` holds one row per model size)."""
    torch.set_num_threads(1)
    sizes, vllm_only = (["XS"], []) if quick else (["XS", "S", "L"], ["M10"])
    n_prompts, n, max_new, max_batch = (8, 4, 16, 32) if quick else (64, 4, 32, 64)
    vllm = _vllm_status() if not quick else "skipped in --quick"
    prompts = _prompts(n_prompts)
    result: dict = {
        "setup": {
            "prompts": n_prompts,
            "n": n,
            "max_new_tokens": max_new,
            "max_batch": max_batch,
            "threads": 1,
        },
        "vllm": vllm,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        tok = Path(tmp) / "tok"
        train_tokenizer((json.loads(line)["question"] for line in CORPUS.open()), tok, vocab_size=2048)
        for size in sizes + vllm_only:
            model_dir = init_model(size, tok, Path(tmp) / size, seed=0)
            row: dict = {"params": count_params(model_dir)}
            engine = HFEngine(model_dir, max_batch=max_batch, threads=1)
            if size in sizes:
                row.update(_hf_vs_plain(engine, prompts, n, max_new))
            else:
                engine.generate(prompts[:2], n=2, temperature=1.0, max_new_tokens=4, seed=0)
                out, t = _timed(
                    engine.generate, prompts, n=n, temperature=1.0, max_new_tokens=max_new, seed=0
                )
                row["hf_tok_s"] = sum(s.n_tokens for r in out for s in r) / t
            del engine
            if vllm == "available":
                row.update(_vllm_vs_hf(model_dir, row["hf_tok_s"], prompts, n, max_new, max_batch))
            result["sizes"][size] = row
    return result


def format_table(result: dict) -> str:
    """The result as a plain-text table, one line per model size."""
    s = result["setup"]
    lines = [
        f"engines: {s['prompts']} prompts x n={s['n']}, {s['max_new_tokens']} new tokens, max_batch {s['max_batch']}, "
        f"{s['threads']} thread; vllm: {result['vllm']}",
        f"{'size':>5} {'params':>10} {'ours tok/s':>11} {'plain tok/s':>12} {'ours/plain':>11} {'vllm tok/s':>11} {'vllm/ours':>10} {'vllm start s':>13}",
    ]

    def cell(row: dict, key: str, width: int, fmt: str) -> str:
        return f"{row[key]:>{width}{fmt}}" if key in row else f"{'-':>{width}}"

    for size, row in result["sizes"].items():
        lines.append(
            f"{size:>5} {row['params']:>10,} "
            + " ".join(
                cell(row, k, w, f)
                for k, w, f in [
                    ("hf_tok_s", 11, ".0f"),
                    ("plain_generate_tok_s", 12, ".0f"),
                    ("hf_vs_plain", 11, ".2f"),
                    ("vllm_tok_s", 11, ".0f"),
                    ("vllm_vs_hf", 10, ".2f"),
                    ("vllm_start_s", 13, ".1f"),
                ]
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(format_table(run(quick="--quick" in sys.argv[1:])))
