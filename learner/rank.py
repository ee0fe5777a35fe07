"""One DeepSpeed rank of the learner group: a plain class that ``learner.group`` runs as a Ray actor.

A rank joins the group's default process group (gloo on CPU, NCCL on GPU), and for
each fine-tune loads the model, wraps it with ``deepspeed.initialize`` (ZeRO stage,
precision and batch from ``LearnerConfig``; torch's AdamW, so no fused op is
compiled) and trains its share of every global batch (``learner.data.make_batches``
with its rank) with the shared objective ``learner.trainer.sft_loss``. Rank 0 then
gathers the full parameters (needed under ZeRO-3), saves a Hugging Face checkpoint
atomically, and keeps the weights for the broadcast to the samplers.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
from collections.abc import Sequence

import torch

from learner.broadcast import WeightGroup, flatten_state, send_state, weights_checksum
from learner.data import SFTExample, collate, make_batches, tokenize_all
from learner.trainer import lr_factor, save_atomic, sft_loss
from rest.config import LearnerConfig

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


def ds_config(cfg: LearnerConfig, per_rank_batch: int) -> dict:
    """The DeepSpeed config of one fine-tune: ZeRO stage, precision, clip, torch AdamW."""
    return {
        "train_micro_batch_size_per_gpu": per_rank_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": per_rank_batch * cfg.world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": [0.9, 0.95],
                "eps": 1e-8,
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


def jit_built_ops() -> list[str]:
    """Names of DeepSpeed ops this process built or loaded at run time (should stay empty)."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    return sorted(getattr(OpBuilder, "_loaded_ops", {}))


class LearnerRank:
    """Rank ``rank`` of ``world_size``: joins the process group, fits, and (rank 0) serves weights."""

    def __init__(self, rank: int, world_size: int, num_threads: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"LearnerRank: need 0 <= rank < world_size, got {rank}/{world_size}")
        torch.set_num_threads(num_threads)
        self.rank, self.world_size = rank, world_size
        self._state: dict[str, torch.Tensor] | None = None
        self._flat: tuple[torch.Tensor, list] | None = None
        self._checksum: str | None = None
        self._weights: WeightGroup | None = None

    def ping(self) -> int:
        return self.rank

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
        epoch and deals each rank its part of every global batch); DeepSpeed averages
        the gradients. Rank 0 saves the result to ``out_dir`` and keeps its weights.
        Returns this rank's losses, steps, tokens and seconds.
        """
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar per fit in the driver's log
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
        data, skipped = tokenize_all(tokenizer, examples, cfg.max_len)
        if len(data) < self.world_size:
            raise ValueError(
                f"fit {name}: {len(data)} trainable examples cannot feed {self.world_size} ranks"
            )
        per_rank = max(1, cfg.batch_size // self.world_size)
        plan = [
            b
            for epoch in range(cfg.epochs)
            for b in make_batches(
                data,
                batch_size=per_rank,
                shuffle_seed=(seed, epoch),
                rank=self.rank,
                world_size=self.world_size,
            )
        ]
        total = len(plan)
        pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)

        def schedule(optimizer):
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: lr_factor(min(step, total - 1), total, cfg.warmup_steps, "cosine")
            )

        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=ds_config(cfg, per_rank),
            lr_scheduler=schedule,
        )
        losses, tokens = [], 0
        engine.train()
        start = time.perf_counter()
        for step, idx in enumerate(plan):
            batch = {k: v.to(engine.device) for k, v in collate([data[i] for i in idx], pad_id).items()}
            loss, _ = sft_loss(engine, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"fit {name}: loss is {loss.item()} at step {step} on rank {self.rank}"
                )
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
        seconds = time.perf_counter() - start
        engine.eval()
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
        }

    def _keep_weights(self, engine, tokenizer, out_dir: str, meta: dict) -> None:
        """Gather full parameters (a no-op below ZeRO-3); rank 0 copies them and saves the checkpoint."""
        import deepspeed

        module = engine.module
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if self.rank == 0:
                self._state = unique_state(module)
                self._flat = None
                self._checksum = weights_checksum(self._state)
                save_atomic(module, tokenizer, out_dir, meta={**meta, "checksum": self._checksum})

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

    def weights_info(self) -> dict:
        """Checksum, byte size and flat-buffer metadata of the last fit's weights."""
        self._require_weights()
        flat, meta = self._flat_state()
        return {"checksum": self._checksum, "bytes": int(flat.numel()), "meta": meta}

    def _flat_state(self) -> tuple[torch.Tensor, list]:
        if self._flat is None:
            self._flat = flatten_state(self._require_weights())
        return self._flat

    def weight_group_address(self) -> tuple[str, int]:
        """(address, free port) for the weight group's store, hosted by this rank."""
        return node_address(), free_port()

    def join_weight_group(
        self, master_addr: str, master_port: int, world_size: int, timeout_s: float
    ) -> None:
        """Become rank 0 (the sender) of a fresh weight group with the samplers."""
        self.leave_weight_group()
        self._weights = WeightGroup(master_addr, master_port, 0, world_size, timeout_s)

    def send_weights(self) -> int:
        """Broadcast the last fit's flat weights to the weight group; returns the bytes sent."""
        if self._weights is None:
            raise RuntimeError("learner rank 0 is in no weight group: join_weight_group first")
        flat, _ = self._flat_state()
        send_state(self._weights, flat)
        return int(flat.numel())

    def leave_weight_group(self) -> None:
        if self._weights is not None:
            self._weights.close()
            self._weights = None
