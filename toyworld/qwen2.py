"""A toy model in the Qwen2 architecture: the GPU models' shape at the toy world's size.

The GPU config runs Qwen2.5 checkpoints: q/k/v projections with biases, a chat template.
``as_qwen2`` rewrites one of the world's Llama models as a ``Qwen2ForCausalLM`` with the
same weights and zero q/k/v biases (Qwen2 is Llama plus those biases, so the two compute
the same function) and gives its tokenizer a ChatML template, the Qwen chat format. The
result speaks the world's step grammar, so a run on it (``world.arch: qwen2``,
``configs/rehearsal.yaml``) takes every path a Qwen2 model takes on a GPU cluster:
vLLM's Qwen2 loader and in-place reload, the chat template of the llm-judge ranker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from learner.trainer import save_atomic
from toyworld.modelzoo import has_model

#: the Qwen chat format (ChatML): what an instruct checkpoint's tokenizer carries
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SAME = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "max_position_embeddings", "rms_norm_eps", "vocab_size", "tie_word_embeddings", "bos_token_id",
         "eos_token_id", "pad_token_id")


def qwen2_config(llama: dict):
    """The ``Qwen2Config`` that computes what the Llama config ``llama`` does (same shapes, rope, norm)."""
    from transformers import Qwen2Config

    heads, hidden = llama["num_attention_heads"], llama["hidden_size"]
    if llama.get("head_dim", hidden // heads) != hidden // heads or llama.get("attention_bias") or llama.get("mlp_bias"):
        raise ValueError("as_qwen2: the Llama must have head_dim = hidden_size / heads and no biases")
    rope = (llama.get("rope_parameters") or {}).get("rope_theta", llama.get("rope_theta", 10000.0))
    return Qwen2Config(**{k: llama[k] for k in _SAME if k in llama}, rope_theta=rope, use_sliding_window=False,
                       hidden_act=llama.get("hidden_act", "silu"))


def as_qwen2(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """``src`` (a Llama model dir) rewritten as a Qwen2 model with a ChatML tokenizer in ``dst``
    (``save_atomic``: all at once), unless ``dst`` already holds a model."""
    from transformers import AutoTokenizer, LlamaForCausalLM, Qwen2ForCausalLM

    src, dst = Path(src), Path(dst)
    if has_model(dst):
        return dst
    config = qwen2_config(json.loads((src / "config.json").read_text()))
    llama = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32, use_safetensors=True)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    state = llama.state_dict()
    for name, tensor in model.state_dict().items():
        if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            state[name] = torch.zeros_like(tensor)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or [k for k in unexpected if k != "lm_head.weight"]:
        raise ValueError(f"as_qwen2: {src} does not map onto Qwen2: missing {missing[:3]}, unexpected {unexpected[:3]}")
    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.chat_template = CHATML
    return save_atomic(model, tokenizer, dst, meta={"converted_from": str(src), "architecture": "qwen2"})
