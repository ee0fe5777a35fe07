"""The toy world's models in the Qwen2 architecture (``world.arch: qwen2``, the rehearsal's models)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.config import WorldConfig
from toyworld.modelzoo import init_model, train_tokenizer
from toyworld.qwen2 import as_qwen2


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    out = tmp_path_factory.mktemp("llama")
    train_tokenizer([f"The author Ada Doyle wrote The Pale Moon in {1900 + i}." for i in range(200)], out,
                    vocab_size=300)
    return init_model({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
                       "max_position_embeddings": 256, "tie_word_embeddings": True}, out, out, seed=1)


def test_as_qwen2_computes_what_the_llama_does_with_qkv_biases_and_a_chat_template(llama, tmp_path):
    out = as_qwen2(llama, tmp_path / "qwen2")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["tie_word_embeddings"]
    a, b = AutoModelForCausalLM.from_pretrained(llama), AutoModelForCausalLM.from_pretrained(out)
    assert b.model.layers[0].self_attn.q_proj.bias is not None
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The author Ada Doyle wrote", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    chat = tok.apply_chat_template([{"role": "user", "content": "Who?"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n"
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert as_qwen2(llama, out) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp  # made once


def test_a_llama_with_biases_is_refused_in_one_line(llama, tmp_path):
    biased = tmp_path / "biased"
    biased.mkdir()
    config = json.loads((llama / "config.json").read_text())
    (biased / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    with pytest.raises(ValueError, match="no biases"):
        as_qwen2(biased, tmp_path / "out")


def test_world_model_follows_world_arch():
    assert str(WorldConfig(dir="w").model_path("L-warm")) == "w/models/L-warm"
    assert str(WorldConfig(dir="w", arch="qwen2").model_path("S-base")) == "w/models/qwen2/S-base"
