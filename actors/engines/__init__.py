"""Inference engines behind one interface (``core.engine.Engine``): transformers or vLLM, by config."""

from __future__ import annotations

from collections.abc import Callable

from actors.engines.hf import HFEngine
from actors.engines.vllm_engine import VLLMEngine
from core.config import EngineConfig
from core.engine import Engine
from core.errors import EngineError


def make_engine(cfg: EngineConfig, revision: str | None = None, sleep_mode: bool = False) -> Engine:
    """Build the engine that ``cfg.backend`` names ("hf" or "vllm") over ``cfg.model``.

    ``cfg.model`` is a local directory or a hub id, which is resolved through the Hugging
    Face cache at ``revision`` (a run passes the commit it recorded: ``core.hub``).
    A local model directory must already exist: when ``cfg.random_init`` is set, building
    the random model (``toyworld.modelzoo.ensure_random_model``) is the caller's job,
    because only the caller knows which texts its tokenizer should be trained on.
    A missing or unloadable model is an ``EngineError``. ``sleep_mode``: the engine will ``sleep`` and
    ``wake`` (a colocated rollout sampler: ``rest.colocation``); vLLM chooses its allocator for it at
    start, the transformers engine can always sleep.
    """
    if not cfg.model:
        raise EngineError("engine.model is empty: set it to a Hugging Face model directory or hub id")
    if cfg.backend == "hf":
        return HFEngine(cfg.model, dtype=cfg.dtype, max_batch=cfg.max_batch, threads=cfg.threads, revision=revision)
    if cfg.backend == "vllm":
        return VLLMEngine(
            cfg.model,
            dtype=cfg.dtype,
            max_batch=cfg.max_batch,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            kv_cache_gib=cfg.kv_cache_gib,
            enforce_eager=cfg.enforce_eager,
            revision=revision,
            sleep_mode=sleep_mode,
        )
    raise EngineError(f"engine.backend must be 'hf' or 'vllm', got {cfg.backend!r}")


def chat_format(tokenizer) -> Callable[[str], str]:
    """How a prompt reaches a model as one user turn: its ``tokenizer``'s chat template, ready for the
    assistant's reply, or the prompt itself (a raw completion) when it has no template (or is None).

    The engines put the bos token before every prompt themselves, so a template's own leading bos
    is dropped rather than doubled.
    """
    if not getattr(tokenizer, "chat_template", None):
        return lambda text: text
    bos = tokenizer.bos_token or ""

    def render(text: str) -> str:
        out = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)
        return out[len(bos):] if bos and out.startswith(bos) else out

    return render
