"""Inference engines behind one interface (``core.engine.Engine``): transformers or vLLM, by config."""

from __future__ import annotations

from actors.engines.hf import HFEngine
from actors.engines.vllm_engine import VLLMEngine
from core.config import EngineConfig
from core.engine import Engine
from core.errors import EngineError


def make_engine(cfg: EngineConfig, revision: str | None = None) -> Engine:
    """Build the engine that ``cfg.backend`` names ("hf" or "vllm") over ``cfg.model``.

    ``cfg.model`` is a local directory or a hub id, which is resolved through the Hugging
    Face cache at ``revision`` (a run passes the commit it recorded: ``core.hub``).
    A local model directory must already exist: when ``cfg.random_init`` is set, building
    the random model (``toyworld.modelzoo.ensure_random_model``) is the caller's job,
    because only the caller knows which texts its tokenizer should be trained on.
    A missing or unloadable model is an ``EngineError``.
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
        )
    raise EngineError(f"engine.backend must be 'hf' or 'vllm', got {cfg.backend!r}")
