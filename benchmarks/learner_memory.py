"""Host memory of one optimizer step's forward/backward under the learner's memory settings.

``python -m benchmarks.learner_memory`` runs each setting in a fresh process (peak RSS
is per process): a 9M-parameter Llama, 16 sequences of 256-1,023 tokens (half prompt,
half trained), the learner's loss (``sft_loss`` with the batch's normaliser) over the
length-bucketed micro-batches of ``micro_batches``, gradients kept as an optimizer step
would. It prints the growth of peak RSS during the step (the peak reset just before it), one JSON line per setting:
eager vs sdpa attention, one batch of 16 vs accumulated micro-batches, with and
without gradient checkpointing. CPU figures; the ratios are what carry to a GPU.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from learner.data import IGNORE, Tokenized, collate, micro_batches, target_weight
from learner.trainer import sft_loss

#: (micro-batch size, gradient checkpointing, attention) per measured setting
SETTINGS = [(16, False, "eager"), (16, False, "sdpa"), (4, False, "sdpa"), (4, True, "sdpa"), (1, True, "sdpa")]


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), None)
    except OSError:
        return None


def _reset_peak_kib() -> int:
    """Reset the process's peak RSS to its current RSS (Linux: VmHWM via clear_refs) and return it.

    Without the reset, a peak reached before the step (imports, model init) hides the
    step's own peak; where /proc cannot reset it, the lifetime peak (ru_maxrss) stands in.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss = _status_kib("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_kib() -> int:
    return _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(micro: int, checkpointing: bool, attention: str) -> dict:
    """Peak RSS growth (MiB) of one step of 16 sequences in micro-batches of ``micro``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM


    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, intermediate_size=1024,
                         vocab_size=4096, max_position_embeddings=1024, tie_word_embeddings=True)
    config._attn_implementation = attention
    model = LlamaForCausalLM(config)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    gen = torch.Generator().manual_seed(1)
    data = []
    for n in torch.randint(256, 1024, (16,), generator=gen).tolist():
        ids = torch.randint(0, 4096, (n,), generator=gen).tolist()
        data.append(Tokenized(tuple(ids), tuple([IGNORE] * (n // 2) + ids[n // 2 :])))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    normalizer = sum(target_weight(t) for t in data)
    before = _reset_peak_kib()
    for part in micro_batches(range(len(data)), [len(t) for t in data], len(data) // micro):
        loss, _ = sft_loss(model, collate([data[i] for i in part], 0), normalizer=normalizer)
        loss.backward()
    peak = _peak_kib()
    params = sum(p.numel() for p in model.parameters())
    return {"micro_batch": micro, "gradient_checkpointing": checkpointing, "attention": attention,
            "params": params, "step_peak_mib": round((peak - before) / 1024)}


def main() -> None:
    if len(sys.argv) == 4:
        micro, checkpointing, attention = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
        print(json.dumps(measure(micro, checkpointing, attention)))
        return
    for micro, checkpointing, attention in SETTINGS:
        args = [sys.executable, "-m", "benchmarks.learner_memory", str(micro), str(int(checkpointing)), attention]
        done = subprocess.run(args, capture_output=True, text=True, timeout=600)
        print(done.stdout.strip() or f"{args[3:]} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)


if __name__ == "__main__":
    main()
