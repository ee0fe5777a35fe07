"""One DeepSpeed rank of the learner group: a plain class that ``learner.group`` runs as a Ray actor.

A rank joins the group's default process group (gloo on CPU, NCCL on GPU), and for
each fine-tune loads the model (``load_model``: in the training precision, sdpa
attention where supported, optionally gradient checkpointing, and under ZeRO-3
partitioned as it is built, through ``deepspeed.zero.Init``, so no rank ever holds
the whole model), wraps it with ``deepspeed.initialize`` (ZeRO stage, precision and
micro-batch / accumulation from ``LearnerConfig``; torch's AdamW, so no fused op is
compiled) and trains its share of every global batch (``learner.data.make_batches``
with its rank), split into length-bucketed micro-batches, with the shared objective
``learner.trainer.sft_loss``. Every micro-batch's loss is divided by its global
batch's total token weight, so the update is the global batch's token mean whatever
the micro-batch size and world size. The ranks then gather the parameters one at a
time (``gathered_state``); rank 0 keeps the full copy, in the training precision,
saves a Hugging Face checkpoint atomically, and serves the weights to the samplers.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import socket
import time
from collections.abc import Sequence

import torch

from core.config import LearnerConfig
from learner.broadcast import (
    WeightGroup,
    device_key,
    meta_nbytes,
    plan_buckets,
    send_buckets,
    state_meta,
    weights_checksum,
)
from learner.data import SFTExample, make_batches, micro_batches, target_weight, tokenize_all
from learner.trainer import ADAM_BETAS, ADAM_EPS, lr_factor, run_steps, save_atomic

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port that is free on this host right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_address() -> str:
    """This node's IP address as Ray sees it (the address peers on other nodes can reach)."""
    import ray

    return ray.util.get_node_ip_address()


#: torch dtype the model is loaded and trained in, per ``LearnerConfig.precision``
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def ds_config(cfg: LearnerConfig) -> dict:
    """The DeepSpeed config of one fine-tune: micro-batch and accumulation, ZeRO stage, precision, clip, AdamW."""
    micro, accumulation = cfg.micro_batch, cfg.gradient_accumulation_steps
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * cfg.world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": list(ADAM_BETAS),
                "eps": ADAM_EPS,
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,  # the fused Adam would be compiled at run time
            },
        },
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def unique_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of ``module``'s state dict, each storage once (tied weights keep the first name)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in module.state_dict().items():
        ptr = t.data_ptr()
        if ptr in seen and t.numel() > 0:
            continue
        seen.add(ptr)
        out[name] = t.detach().to("cpu", copy=True)
    return out


def gathered_state(module: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """CPU copies of ``module``'s state dict (each tensor once, tied weights under the first name).

    Every rank must call it (under ZeRO-3 each parameter is all-gathered from its
    shards); only where ``keep`` is true are the copies made, the others get {}.
    Parameters are gathered one at a time, so besides the copies a rank never holds
    more than one full parameter: the whole model is never gathered at once. Tensors
    keep the training dtype (bf16 training saves a consolidated 16-bit checkpoint).
    """
    import deepspeed

    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        with deepspeed.zero.GatheredParameters([t] if hasattr(t, "ds_id") else [], modifier_rank=None):
            if keep:
                out[name] = t.detach().to("cpu", copy=True)
    return out


def attention_for(model_dir: str, wanted: str) -> str:
    """The attention kernel to load ``model_dir`` with: ``wanted``, or for "auto" sdpa where
    the architecture supports it (torch's fused kernel, no seq x seq weights kept) and eager elsewhere."""
    if wanted != "auto":
        return wanted
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)] if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING else None
    return "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"


def load_model(model_dir: str, cfg: LearnerConfig, ds_cfg: dict) -> tuple[torch.nn.Module, bool]:
    """The model of one fit, loaded for memory; returns (model, whether it was built under zero.Init).

    Weights load straight into the training dtype (bf16 and fp16 halve the host copy
    of fp32) with ``attention_for``'s kernel. Under ZeRO-3, transformers builds the
    model inside ``deepspeed.zero.Init`` (it does so while an ``HfDeepSpeedConfig`` of
    this fit's DeepSpeed config is alive): each parameter is partitioned across the
    ranks as it is created and the checkpoint is loaded into the shards, so no rank
    ever materialises the whole model. The config is dropped right after loading, so
    the next fit of this long-lived rank (perhaps at another stage) starts clean.
    With ``cfg.gradient_checkpointing`` the decoder layers recompute their
    activations in the backward pass (non-reentrant: correct with frozen inputs).
    """
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    zero_init = cfg.zero_stage == 3
    keep_alive = HfDeepSpeedConfig(ds_cfg) if zero_init else None  # transformers holds only a weakref
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=DTYPES[cfg.precision],
            attn_implementation=attention_for(model_dir, cfg.attn_implementation),
            use_safetensors=True,
        )
    finally:
        if keep_alive is not None:
            unset_hf_deepspeed_config()
            del keep_alive
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model, zero_init


def jit_built_ops() -> list[str]:
    """Names of DeepSpeed ops this process built or loaded at run time (should stay empty)."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    return sorted(getattr(OpBuilder, "_loaded_ops", {}))


class _EngineSteps:
    """``run_steps``'s stepper on a DeepSpeed engine: it accumulates the micro-batches, clips, steps the
    optimizer and the lr schedule at the last one of each step, and averages gradients over the ranks."""

    def __init__(self, engine):
        self.engine = engine

    def begin(self, step: int) -> float:
        return self.engine.get_lr()[0]

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # an optimizer step at the accumulation boundary only

    def end(self) -> None:
        pass


class LearnerRank:
    """Rank ``rank`` of ``world_size``: joins the process group, fits, and (rank 0) serves weights."""

    def __init__(self, rank: int, world_size: int, num_threads: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"LearnerRank: need 0 <= rank < world_size, got {rank}/{world_size}")
        torch.set_num_threads(num_threads)
        self.rank, self.world_size = rank, world_size
        self._state: dict[str, torch.Tensor] | None = None
        self._checksum: str | None = None
        self._weights: WeightGroup | None = None

    def ping(self) -> int:
        return self.rank

    def cuda_available(self) -> bool:
        """Whether this rank's process sees a CUDA device (Ray may declare logical GPUs on a CPU machine)."""
        return torch.cuda.is_available()

    def release_memory(self) -> dict:
        """Give the device back to the engines that share it (``rest.colocation``); returns what was freed.

        A fit destroys its DeepSpeed engine before it returns (every fit builds a fresh one from its
        starting checkpoint), so no model, gradient or optimizer state outlives it and there is nothing
        for ZeRO's ``offload_states`` to move; what stays on a GPU is the memory the CUDA caching
        allocator keeps for reuse, which this collects and returns to the driver (rank 0's copy of
        the weights for the sync is in host memory already). On the CPU there is no device cache: the
        garbage collection runs, and ``freed_bytes`` is None.
        """
        gc.collect()
        if not torch.cuda.is_available():
            return {"rank": self.rank, "device": "cpu", "freed_bytes": None}
        before = torch.cuda.memory_reserved()
        torch.cuda.empty_cache()
        return {"rank": self.rank, "device": "cuda", "freed_bytes": before - torch.cuda.memory_reserved()}

    def rendezvous(self) -> tuple[str, int]:
        """(address, free port) where this rank (rank 0) will host the process group's store."""
        return node_address(), free_port()

    def init_distributed(self, master_addr: str, master_port: int, backend: str, timeout_s: float) -> str:
        """Join the default process group through DeepSpeed; returns the backend in use.

        DeepSpeed would build its shared-memory comm op (40-65 s of compiling on first
        use) for CPU worlds; marking it incompatible makes it fall back to plain gloo.
        """
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",  # one device per actor: Ray narrows CUDA_VISIBLE_DEVICES to it
        )
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            timeout=datetime.timedelta(seconds=timeout_s),
            rank=self.rank,
            world_size=self.world_size,
        )
        return torch.distributed.get_backend()

    # ------------------------------------------------------------ training

    def fit(
        self,
        model_dir: str,
        examples: Sequence[SFTExample],
        out_dir: str,
        seed: int,
        name: str,
        cfg: LearnerConfig,
    ) -> dict:
        """Fine-tune the model in ``model_dir`` on this rank's share of ``examples``.

        Every rank runs the same number of steps (``make_batches`` plans one shared
        epoch and deals each rank its part of every global batch) and, per step, the
        same number of micro-batches (``cfg.gradient_accumulation_steps``); DeepSpeed
        accumulates them and averages the gradients over the ranks. Each rank knows
        every rank's plan, so it divides its micro-batch losses by the global batch's
        token weight with no communication. Rank 0 saves the result to ``out_dir``
        and keeps its weights. Returns this rank's losses (the global batch's token
        mean once averaged over ranks), steps, tokens, seconds and memory settings.
        """
        import deepspeed
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar per fit in the driver's log
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        data, skipped = tokenize_all(tokenizer, examples, cfg.max_len)
        if len(data) < self.world_size:
            raise ValueError(
                f"fit {name}: {len(data)} trainable examples cannot feed {self.world_size} ranks"
            )
        config = ds_config(cfg)
        micro, accumulation = cfg.micro_batch, cfg.gradient_accumulation_steps
        plans = [  # every rank's plan: the same pure function of the seed on each rank
            [
                b
                for epoch in range(cfg.epochs)
                for b in make_batches(
                    data,
                    batch_size=micro * accumulation,
                    shuffle_seed=(seed, epoch),
                    rank=r,
                    world_size=self.world_size,
                )
            ]
            for r in range(self.world_size)
        ]
        plan, total = plans[self.rank], len(plans[self.rank])
        weight = [target_weight(t) for t in data]
        # DeepSpeed divides each micro-batch loss by the accumulation steps and averages over ranks
        normalizers = [
            sum(weight[i] for p in plans for i in p[step]) / (accumulation * self.world_size)
            for step in range(total)
        ]
        lengths = [len(t) for t in data]
        pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()  # the fit's peak: the model's load and every step
        model, zero_init = load_model(model_dir, cfg, config)
        attention = model.config._attn_implementation
        param_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")

        def schedule(optimizer):
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: lr_factor(min(step, total - 1), total, cfg.warmup_steps, "cosine")
            )

        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=config,
            lr_scheduler=schedule,
        )
        engine.train()
        start = time.perf_counter()
        done = run_steps(engine, data, pad_id, (micro_batches(idx, lengths, accumulation) for idx in plan),
                         _EngineSteps(engine), f"fit {name} on rank {self.rank}", normalizers=normalizers,
                         device=engine.device)
        losses, tokens = done.losses, done.tokens
        seconds = time.perf_counter() - start
        engine.eval()
        memory = {
            "micro_batch": micro,
            "accumulation": accumulation,
            "gradient_checkpointing": bool(getattr(engine.module, "is_gradient_checkpointing", False)),
            "attention": attention,
            "zero_init": zero_init,
            "dtype": param_dtype,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        }
        meta = {
            "name": name,
            "seed": seed,
            "steps": total,
            "examples": len(data),
            "skipped": skipped,
            "zero_stage": cfg.zero_stage,
            "world_size": self.world_size,
            "precision": cfg.precision,
            "final_loss": losses[-1],
            **memory,
        }
        self._keep_weights(engine, tokenizer, out_dir, meta)
        jit = jit_built_ops()
        engine.destroy()
        return {
            "rank": self.rank,
            "losses": losses,
            "steps": total,
            "tokens": tokens,
            "seconds": seconds,
            "examples": len(data),
            "skipped": skipped,
            "checksum": self._checksum if self.rank == 0 else None,
            "jit_ops": jit,
            "memory": memory,
        }

    def _keep_weights(self, engine, tokenizer, out_dir: str, meta: dict) -> None:
        """Gather the parameters one at a time (``gathered_state``); rank 0 keeps them and saves the checkpoint."""
        state = gathered_state(engine.module, keep=self.rank == 0)
        if self.rank == 0:
            self._state = state
            self._checksum = weights_checksum(state)
            save_atomic(
                engine.module, tokenizer, out_dir, meta={**meta, "checksum": self._checksum}, state_dict=state
            )

    # ------------------------------------------------------------ weights (rank 0)

    def _require_weights(self) -> dict[str, torch.Tensor]:
        if self.rank != 0:
            raise RuntimeError(f"learner rank {self.rank} holds no weights: only rank 0 serves them")
        if self._state is None:
            raise RuntimeError("learner rank 0 holds no weights yet: run fit first")
        return self._state

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The last fit's full weights (CPU tensors, tied weights once): the object-store payload."""
        return self._require_weights()

    def weights_info(self, bucket_bytes: int = 256 << 20) -> dict:
        """Checksum, byte size, per-tensor metadata and the bucket plan of the last fit's weights."""
        meta = state_meta(self._require_weights())
        return {"checksum": self._checksum, "bytes": meta_nbytes(meta), "meta": meta,
                "plan": plan_buckets(meta, bucket_bytes)}

    def device_key(self) -> str | None:
        """This rank's GPU (``learner.broadcast.device_key``), for the weight group's backend."""
        return device_key()

    def weight_group_address(self) -> tuple[str, int]:
        """(address, free port) for the weight group's store, hosted by this rank."""
        return node_address(), free_port()

    def join_weight_group(
        self, master_addr: str, master_port: int, world_size: int, timeout_s: float, backend: str = "gloo"
    ) -> None:
        """Become rank 0 (the sender) of a fresh weight group with the samplers."""
        self.leave_weight_group()
        self._weights = WeightGroup(master_addr, master_port, 0, world_size, timeout_s, backend)

    def send_weights(self, meta: list, plan: list) -> int:
        """Broadcast the last fit's weights to the weight group, bucket by bucket; returns the bytes sent."""
        if self._weights is None:
            raise RuntimeError("learner rank 0 is in no weight group: join_weight_group first")
        return send_buckets(self._weights, self._require_weights(), meta, plan)

    def leave_weight_group(self) -> None:
        if self._weights is not None:
            self._weights.close()
            self._weights = None
