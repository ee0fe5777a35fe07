"""Supervised fine-tuning on per-step examples: the loss, the one training loop, its CPU entry point.

``sft_loss`` is the one place the training objective lives and ``run_steps`` the one loop
(optimizer steps of micro-batches) that every training in the project runs: ``train``,
the single-process AdamW run that trains the toy world's bases from scratch and fine-tunes
its models, and ``learner.deepspeed_rank.LearnerRank.fit``, the ReST fine-tunes on the
DeepSpeed ranks; they differ only in how a step is applied (a ``Stepper``). ``train`` is
deterministic per seed: the batch plan comes from ``learner.data.make_batches`` and the
model runs on one thread by default.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.config import ConfigError, check_fields, setting
from learner.data import IGNORE, SFTExample, collate, make_batches, tokenize_all

log = logging.getLogger(__name__)

#: AdamW's moments and epsilon, for this loop and the DeepSpeed ranks' (``learner.deepspeed_rank.ds_config``)
ADAM_BETAS, ADAM_EPS = (0.9, 0.95), 1e-8

#: architectures whose logits are exactly lm_head(last hidden state), so the loss may
#: run the head only on the positions that carry a label (see ``sft_loss``)
_PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def sft_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], normalizer: float | None = None
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the labelled tokens; returns (loss, n_target_tokens).

    Position t predicts labels[t + 1]; IGNORE labels (prompt, bos, padding) add
    nothing. With per-sequence ``weights`` in the batch, each token counts with its
    sequence's weight (all 1: the plain token mean). For plain-head architectures the
    output layer runs only on labelled positions, which for per-step examples (short
    completions after long prompts) skips most of the vocabulary projection.

    ``normalizer`` replaces the batch's own total token weight as the divisor: the
    micro-batches of one larger batch pass that batch's total, so their losses (and
    gradients) add up to the larger batch's token mean whatever their sizes.
    """
    inner = getattr(model, "module", model)  # a DeepSpeed engine wraps the HF model
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    n_target = int(keep.sum())
    if n_target == 0:
        raise ValueError("sft_loss: the batch has no labelled tokens")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    plain_head = getattr(inner.config, "model_type", None) in _PLAIN_HEAD_MODELS
    if plain_head and not hasattr(inner.get_output_embeddings().weight, "ds_id"):
        hidden = inner.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1]
        logits = inner.get_output_embeddings()(hidden[keep])
    elif plain_head:
        # ZeRO-3 (partitioned parameters, with a ``ds_id``) fetches and releases them through hooks
        # on the whole model's forward: calling decoder and head apart skips those, and the
        # accumulated gradients came out wrong (measured). The whole forward runs the head only
        # on the positions where some row has a label (``logits_to_keep``).
        cols = keep.any(0).nonzero().squeeze(1)
        logits = model(**inputs, use_cache=False, logits_to_keep=cols).logits[keep[:, cols]]
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1][keep]
    token_loss = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    weights = batch.get("weights")
    if weights is None and normalizer is None:
        return token_loss.mean(), n_target
    if weights is None:
        weights = torch.ones(targets.shape[0], device=token_loss.device)
    w = weights.to(token_loss.dtype)[:, None].expand_as(targets)[keep]
    total = (token_loss * w).sum()
    return total / (w.sum() if normalizer is None else normalizer), n_target


@dataclass
class TrainConfig:
    """Hyperparameters of one supervised fine-tuning (or from-scratch) run."""

    lr: float = setting(1e-3, "Peak learning rate of AdamW, reached after warmup.", above=0.0)
    epochs: int = setting(1, "Passes over the examples (ignored when max_steps > 0).", min=1)
    max_steps: int = setting(0, "If > 0, train exactly this many optimizer steps, reshuffling at each epoch end.",
                             min=0)
    batch_size: int = setting(32, "Sequences per optimizer step (used when batch_tokens is 0).", min=1)
    batch_tokens: int = setting(
        0, "If > 0, size batches by padded tokens (rows x longest row) instead of batch_size; at least max_len.", min=0)
    warmup_steps: int = setting(10, "Steps of linear warmup from 0 to lr (the learner's default too).", min=0)
    schedule: Literal["cosine", "linear", "constant"] = setting(
        "cosine", "Decay after warmup, down to 0 at the last step (constant: stay at lr).")
    weight_decay: float = setting(
        0.0, "AdamW decoupled weight decay on matrices (not on norms, biases); 0 as in the learner.", min=0.0)
    grad_clip: float = setting(1.0, "Clip the global gradient norm to this (0 = no clipping).", min=0.0)
    seed: int = setting(0, "Seeds the batch order and torch's RNG: the same seed gives the same run.")
    max_len: int = setting(256, "Longest training sequence in tokens (longer prompts lose their start).", min=2)
    log_every: int = setting(10, "Log the loss (and refresh the progress bar) every this many steps.", min=1)
    stop_below: float = setting(
        0.0, "Stop before max_steps once a logged mean loss is below this (0 = never): a drill ends once learned.",
        min=0.0)
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", "bf16: bf16 autocast (weights stay fp32); auto: bf16 where the CPU has native bf16.")
    num_threads: int = setting(
        1, "torch intra-op threads while training (1: processes sharing a small CPU don't fight).", min=1)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.batch_tokens and self.batch_tokens < self.max_len:
            raise ConfigError(f"TrainConfig: batch_tokens: must be 0 or at least max_len {self.max_len}, "
                              f"got {self.batch_tokens}")


@dataclass
class TrainResult:
    """What a run did: per-step losses and throughput (tokens = non-padding input tokens)."""

    losses: list[float]
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    target_tokens: int = 0
    skipped: int = 0
    precision: str = "fp32"
    out_dir: str | None = None
    lrs: list[float] = field(default_factory=list, repr=False)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at 0-based ``step``: linear warmup, then the decay."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup + 1) / max(1, total - warmup)
    progress = min(1.0, progress)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _bf16_native() -> bool:
    """Whether this CPU runs bf16 matmuls natively (otherwise bf16 is emulated and slow)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _load(model, tokenizer):
    """The model and tokenizer objects, loading either from a Hugging Face dir when given a path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"train: {path} is not a Hugging Face model dir (no config.json)")
        tokenizer = tokenizer if tokenizer is not None else path
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if tokenizer is None:
        raise ValueError("train: a tokenizer is required when the model is given as an object")
    return model, tokenizer


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm scales and biases are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS)


def save_atomic(
    model,
    tokenizer,
    out_dir: str | os.PathLike,
    meta: dict | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a Hugging Face dir (safetensors + tokenizer [+ training.json]) all at once.

    Everything goes to a temporary sibling first and is renamed into place, so a crash
    never leaves a half-written checkpoint under ``out_dir``; an older dir there is
    replaced. ``state_dict`` (full tensors) is saved instead of the model's own, whose
    parameters may be ZeRO-3 shards.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if meta is not None:
            (tmp / "training.json").write_text(json.dumps(meta, indent=1) + "\n")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _epoch_batches(data, cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """The batch plan of one epoch: length-grouped, seeded by (seed, epoch)."""
    size = {"batch_tokens": cfg.batch_tokens} if cfg.batch_tokens else {"batch_size": cfg.batch_size}
    return make_batches(data, shuffle_seed=(cfg.seed, epoch), **size)


def _plan(data, cfg: TrainConfig) -> tuple[int, Iterator[list[int]]]:
    """(total steps, iterator of index batches) for the whole run."""
    if cfg.max_steps:
        total = cfg.max_steps

        def cycle():
            epoch = 0
            while True:
                yield from _epoch_batches(data, cfg, epoch)
                epoch += 1

        batches = cycle()
    else:
        plans = [_epoch_batches(data, cfg, e) for e in range(cfg.epochs)]
        total = sum(len(p) for p in plans)
        batches = (b for p in plans for b in p)
    return total, batches


class Stepper(Protocol):
    """How one optimizer step is taken: a plain AdamW here, a DeepSpeed engine on the learner's ranks."""

    def begin(self, step: int) -> float:
        """Set up 0-based optimizer step ``step``; returns its learning rate."""

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch's loss."""

    def end(self) -> None:
        """Apply the step's accumulated gradients."""


@dataclass
class Steps:
    """What ``run_steps`` did: per-step losses (a step's micro-batch losses summed, over the count),
    the steps' learning rates, non-padding input tokens and labelled target tokens."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    tokens: int = 0
    targets: int = 0


def run_steps(
    model: torch.nn.Module,
    data: Sequence,
    pad_id: int,
    plan: Iterable[Sequence[Sequence[int]]],
    stepper: Stepper,
    where: str,
    normalizers: Sequence[float] | None = None,
    bf16: bool = False,
    after_step: Callable[[Steps], bool] | None = None,
    device: torch.device | str | None = None,
) -> Steps:
    """The one training loop, of the toy bases and fine-tunes (``train``) and of the ReST fine-tunes on
    the DeepSpeed ranks (``learner.deepspeed_rank.LearnerRank.fit``).

    Each item of ``plan`` is one optimizer step, given as its micro-batches (indices into ``data``);
    each micro-batch's ``sft_loss`` (over ``normalizers[step]`` where given) is back-propagated, then the
    step is applied. An empty micro-batch still runs, on one sequence with its loss zeroed, so every rank
    takes the same passes. A loss that is not finite stops the run with one line naming ``where`` and the
    step. ``after_step(steps)`` runs after each step; True stops the run there. Batches go to ``device``
    (the parameters' device by default)."""
    device = device if device is not None else next(model.parameters()).device
    done = Steps()
    for step, parts in enumerate(plan):
        done.lrs.append(stepper.begin(step))
        step_loss = 0.0
        for part in parts:
            rows = [data[i] for i in (part or next(p for p in parts if p)[:1])]
            batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, n_target = sft_loss(model, batch, normalizer=None if normalizers is None else normalizers[step])
            if not part:
                loss, n_target = loss * 0.0, 0
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{where}: loss is {loss.item()} at step {step} (lr {done.lrs[-1]:.2e})")
            stepper.backward(loss)
            step_loss += loss.item()
            done.tokens += int(batch["attention_mask"].sum()) if part else 0
            done.targets += n_target
        stepper.end()
        done.losses.append(step_loss / len(parts))
        if after_step is not None and after_step(done):
            break
    return done


class _AdamW:
    """``train``'s stepper: AdamW (weight decay on matrices only) at the schedule's lr, clipped gradients."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, total: int):
        self.model, self.cfg, self.total = model, cfg, total
        self.opt = _optimizer(model, cfg)

    def begin(self, step: int) -> float:
        lr = self.cfg.lr * lr_factor(step, self.total, self.cfg.warmup_steps, self.cfg.schedule)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def end(self) -> None:
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def train(
    model,
    tokenizer,
    examples: Sequence[SFTExample | str],
    cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    check: Callable[[int, torch.nn.Module], bool] | None = None,
    check_every: int = 0,
) -> TrainResult:
    """Train ``model`` (an HF causal LM object, changed in place, or a model dir) on ``examples``.

    Examples mix per-step ``SFTExample``s (loss on the completion) and raw texts
    (language modelling on every token). With ``out_dir`` the trained model and its
    tokenizer are saved there atomically. The model is left in eval mode. With ``check``,
    ``check(steps_done, model)`` runs every ``check_every`` steps (and after the last);
    True stops the run there (the skill-gated base training uses it).
    """
    if isinstance(model, (str, os.PathLike)) and out_dir is None:
        raise ValueError(
            "train: out_dir is required when the model is loaded from a dir (else the result is lost)"
        )
    model, tokenizer = _load(model, tokenizer)
    data, skipped = tokenize_all(tokenizer, examples, cfg.max_len)
    if not data:
        raise ValueError(f"train: no trainable sequences ({skipped} examples skipped as longer than max_len)")
    vocab = model.get_input_embeddings().num_embeddings
    top = max(max(t.input_ids) for t in data)
    if top >= vocab:
        raise ValueError(f"train: the tokenizer produced id {top} but the model has only {vocab} embeddings")
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    precision = "bf16" if cfg.precision == "bf16" or (cfg.precision == "auto" and _bf16_native()) else "fp32"

    threads, attn = torch.get_num_threads(), getattr(model.config, "_attn_implementation", None)
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    if precision == "bf16" and attn == "sdpa" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # measured: CPU SDPA gains nothing from bf16, eager does
    try:
        total, batches = _plan(data, cfg)
        model.train()
        bar = tqdm(total=total, disable=not progress, desc="train", unit="step", dynamic_ncols=True)

        def after_step(done: Steps) -> bool:
            steps = len(done.losses)
            bar.update(1)
            if steps % cfg.log_every == 0 or steps == total:
                recent = done.losses[-cfg.log_every :]
                mean = sum(recent) / len(recent)
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{done.lrs[-1]:.1e}")
                log.info("step %d/%d loss %.4f lr %.2e", steps, total, mean, done.lrs[-1])
                if mean < cfg.stop_below:
                    return True
            if check is not None and check_every and (steps % check_every == 0 or steps == total):
                return bool(check(steps, model))
            return False

        start = time.perf_counter()
        done = run_steps(model, data, pad_id, ([next(batches)] for _ in range(total)), _AdamW(model, cfg, total),
                         "train", bf16=precision == "bf16", after_step=after_step)
        seconds = time.perf_counter() - start
        bar.close()
    finally:
        model.eval()
        torch.set_num_threads(threads)
        if attn is not None and getattr(model.config, "_attn_implementation", attn) != attn:
            model.set_attn_implementation(attn)
    losses = done.losses
    result = TrainResult(
        losses=losses,
        steps=len(losses),
        tokens=done.tokens,
        seconds=seconds,
        tokens_per_s=done.tokens / max(seconds, 1e-9),
        target_tokens=done.targets,
        skipped=skipped,
        precision=precision,
        lrs=done.lrs,
    )
    if out_dir is not None:
        meta = {
            "config": asdict(cfg),
            "steps": len(losses),
            "tokens": done.tokens,
            "skipped": skipped,
            "final_loss": sum(losses[-cfg.log_every :]) / len(losses[-cfg.log_every :]),
            "precision": precision,
        }
        result.out_dir = str(save_atomic(model, tokenizer, out_dir, meta))
    return result
