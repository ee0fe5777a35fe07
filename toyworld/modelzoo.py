"""The tiny model family: a byte-level BPE tokenizer and randomly initialised Llamas.

No pretrained weights can be downloaded on the build machines, so every model of the
toy world starts here: a tokenizer trained on the world's own text and a Llama of a
named size, saved as a complete Hugging Face directory (config, safetensors weights,
tokenizer files) that transformers and vLLM both load offline.

Sizes (DESIGN section 5): L is about 1M parameters (what 2 CPU cores can train and
sample), S and XS are the distillation students, ``tiny`` exists for smoke tests, and
M3/M10 are bigger configs for benchmarks and machines with more cores. Every attention
head is 32 or 64 wide because vLLM's CPU attention supports no narrower head.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)


def _llama(hidden: int, layers: int, heads: int, ffn: int, kv_heads: int | None = None) -> dict:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads,
        "intermediate_size": ffn,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    }


#: size name -> LlamaConfig fields (vocabulary excluded: it comes from the tokenizer).
#: Parameter counts measured with ``count_params`` at vocabulary 2048 (tied embeddings).
MODEL_SIZES: dict[str, dict] = {
    "tiny": _llama(32, 1, 1, 64),  # 75,872 params (vLLM's CPU attention needs heads >= 32 wide)
    # XS: 64 wide (2 heads) it never learned to copy: docs/world-build.md
    "XS": _llama(96, 2, 3, 128),  # 344,544 params
    # S: L's width and FFN at half its depth. 96 wide (XS with twice its FFN) it stopped below its
    # answer gate at world seed 7 (63% after 3,000 steps): docs/world-build.md
    "S": _llama(128, 2, 4, 320),  # 639,616 params
    "L": _llama(128, 4, 4, 320),  # 1,016,960 params
    "M3": _llama(256, 4, 8, 512),  # 3,148,032 params
    "M10": _llama(384, 6, 6, 896),  # 10,523,520 params
}


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE on ``texts`` and save it in Hugging Face format.

    Byte-level means every string round-trips exactly (``decode(encode(x)) == x``):
    there is no normaliser, no unknown token and no added prefix space, and the
    tokenizer never inserts special tokens on its own (callers add ``<|bos|>`` or
    ``<|eos|>`` where they want them). Frequent words with their leading space
    become single tokens, which is what lets tiny models copy names (DESIGN 5).
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (the 256 bytes + specials), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_SIZES["L"]["max_position_embeddings"],
    )
    fast.padding_side = "left"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


# ---------------------------------------------------------------- models


def _size_fields(size: str | dict) -> dict:
    if isinstance(size, dict):
        return dict(size)
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r} (known: {', '.join(MODEL_SIZES)})")
    return dict(MODEL_SIZES[size])


def body_params(size: str | dict) -> int:
    """Weights outside the embeddings (attention + MLP per layer), read off the config alone.

    What a training step's compute scales with at these sizes; used to rank sizes
    without building them.
    """
    f = _size_fields(size)
    h, ffn = f["hidden_size"], f["intermediate_size"]
    kv = h * f.get("num_key_value_heads", f["num_attention_heads"]) // f["num_attention_heads"]
    return f["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * ffn)


def init_model(
    size: str | dict, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 0
) -> Path:
    """Save a randomly initialised ``LlamaForCausalLM`` plus tokenizer files in ``out_dir``.

    ``size`` is a ``MODEL_SIZES`` name or a dict of LlamaConfig fields. The vocabulary
    and the bos/eos/pad ids come from the tokenizer in ``tokenizer_dir``. The same
    seed gives bit-identical weights. Returns ``out_dir`` as a Path.
    """
    fields = _size_fields(size)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("pad", PAD))
    }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        **fields,
    )
    cpu_rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(cpu_rng)
    model.generation_config.pad_token_id = ids["pad"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def has_model(model_dir: str | os.PathLike) -> bool:
    """Whether ``model_dir`` holds a config and safetensors weights."""
    d = Path(model_dir)
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


def ensure_random_model(model_dir: str | os.PathLike, size: str, texts: Iterable[str], seed: int = 0) -> Path:
    """Build a random model of ``size`` in ``model_dir`` unless one is already there.

    The tokenizer is trained on ``texts`` first. The directory is built beside its
    final place and renamed into it, so a crash never leaves a half-written model
    that a later call would mistake for a finished one.
    """
    final = Path(model_dir)
    if has_model(final):
        return final
    _size_fields(size)  # fail on a bad size before any training
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        train_tokenizer(texts, tmp)
        init_model(size, tmp, tmp, seed=seed)
        (tmp / "modelzoo.json").write_text(
            json.dumps({"size": size, "seed": seed, "random_init": True}) + "\n"
        )
        if final.exists() and not any(final.iterdir()):
            final.rmdir()
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if has_model(final):  # another process finished first
            return final
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def count_params(model_dir: str | os.PathLike) -> int:
    """Number of distinct parameters of the model in ``model_dir`` (tied weights once)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                total += math.prod(st.get_slice(key).get_shape())
    return total
