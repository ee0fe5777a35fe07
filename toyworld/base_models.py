"""Train the base models (the toy world's analog of pretrained XS, S and L) in parallel processes.

Every size learns the same data from scratch with ``learner.trainer.train``: first
the copy drill (``toyworld.drill``), then the auxiliary worlds' passages and the
demonstrator's per-step examples, as the recipe shapes them (``toyworld.world``), and
last, where the recipe asks for it, a finishing run on the demonstration steps alone.
Sizes train at once, one spawned process each with one torch thread (a small CPU
would otherwise be oversubscribed); the parent
shows one progress bar per size, fed by the trainer's own loss log lines through a
queue. Each process saves ``<models_dir>/<size>-base`` (safetensors, atomically) and
reports the first and last losses and how far the weights moved from their init.

The largest model is the build's critical path (L takes about twice as long as S), so
the smaller sizes run at a lower scheduling priority (``SMALL_NICENESS``): on a
2-core machine L keeps a whole core and XS and S share the other, instead of three
equal processes stretching L's run by half.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from learner.data import SFTExample
from learner.trainer import TrainConfig, train
from toyworld.drill import drill_examples
from toyworld.modelzoo import body_params, count_params, init_model
from toyworld.skills import SKILL_TEXT, SkillGate, SkillGateError, measure

#: seconds without any message from a training process before the parent checks it is alive
_POLL_S = 1.0
#: added niceness of every training process but the largest model's, see the module doc
SMALL_NICENESS = 10


class _LossForwarder(logging.Handler):
    """Forwards the trainer's ``step %d/%d loss %.4f`` log records to the parent as (size, step, total, loss)."""

    def __init__(self, size: str, q):
        super().__init__(logging.INFO)
        self.size, self.q = size, q

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("step ") and isinstance(record.args, tuple) and len(record.args) >= 3:
            step, total, loss = record.args[:3]
            self.q.put(("progress", self.size, int(step), int(total), float(loss)))


def _weight_change(before: dict, after: dict) -> float:
    """Relative L2 distance between two state dicts: ||after - before|| / ||before||."""
    import torch

    num = sum(float(torch.sum((after[k].float() - v.float()) ** 2)) for k, v in before.items())
    den = sum(float(torch.sum(v.float() ** 2)) for v in before.values())
    return (num / max(den, 1e-30)) ** 0.5


def _loss_ends(losses: list[float], window: int) -> tuple[float, float]:
    """Mean loss over the first and the last ``window`` steps of a run."""
    n = max(1, min(window, len(losses)))
    return round(sum(losses[:n]) / n, 4), round(sum(losses[-n:]) / n, 4)


def _train_one(size: str, tokenizer_dir: str, examples: list, cfg: TrainConfig, out_dir: str,
               init_seed: int, q, niceness: int = 0, drill: TrainConfig | None = None,
               drill_mix: float = 0.0, find_share: float = 0.0, probes: dict | None = None,
               check_every: int = 0, gate: SkillGate | None = None, extend: TrainConfig | None = None,
               max_extensions: int = 0, finish: TrainConfig | None = None,
               finish_examples: Sequence[SFTExample] = ()) -> None:
    """Child process: init a ``size`` Llama, drill it (``toyworld.drill``), train it on ``examples``
    measuring its skills on the ``probes`` as it goes, train on (``extend``, at most ``max_extensions``
    times) while they are below its ``gate``, finish it on ``finish_examples`` (``finish``; not a base
    below its gate, which fails the build anyway), save it."""
    try:
        if niceness and hasattr(os, "nice"):
            os.nice(niceness)
        import torch
        import transformers

        torch.set_num_threads(cfg.num_threads)
        transformers.utils.logging.disable_progress_bar()

        logger = logging.getLogger("learner.trainer")
        logger.setLevel(logging.INFO)
        logger.addHandler(_LossForwarder(size, q))
        with tempfile.TemporaryDirectory(prefix=f".{size}-init-", dir=Path(out_dir).parent) as init_dir:
            init_model(size, tokenizer_dir, init_dir, seed=init_seed)
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32, use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(init_dir)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        drilled = None
        if drill is not None:
            data = drill_examples(tokenizer, drill.max_steps * drill.batch_size, init_seed, find_share)
            drilled = train(model, tokenizer, data, drill, progress=False)
        mixed = round(drill_mix * len(examples))
        if mixed:  # fresh drill examples among the world's, so the copying is kept up
            examples = examples + drill_examples(tokenizer, mixed, init_seed + 1, find_share)
        skills: list[dict] = []
        done = 0  # steps before the current training run

        def check(step: int, m) -> bool:
            scores = measure(m, tokenizer, probes)
            skills.append({"step": done + step, **scores})
            q.put(("skills", size, done + step, scores))
            return done > 0 and not gate.missing(scores)  # an extension ends once the gate is met

        result = train(model, tokenizer, examples, cfg, out_dir=out_dir, progress=False,
                       check=check if probes else None, check_every=check_every)
        runs = [result]
        while (probes and gate is not None and extend is not None and len(runs) <= max_extensions
               and gate.missing(skills[-1])):
            done += runs[-1].steps
            runs.append(train(model, tokenizer, examples, replace(extend, seed=extend.seed + len(runs)),
                              out_dir=out_dir, progress=False, check=check, check_every=check_every))
        finished = None
        if finish is not None and not (probes and gate is not None and gate.missing(skills[-1])):
            finished = train(model, tokenizer, list(finish_examples), finish, out_dir=out_dir, progress=False)
        q.put(("done", size, {
            "size": size,
            "params": count_params(out_dir),
            "steps": sum(r.steps for r in runs),
            "extensions": [r.steps for r in runs[1:]],
            "first_loss": _loss_ends(result.losses, cfg.log_every)[0],
            "final_loss": _loss_ends(runs[-1].losses, cfg.log_every)[1],
            "weight_change": round(_weight_change(before, model.state_dict()), 4),
            "tokens": sum(r.tokens for r in runs),
            "tokens_per_s": round(sum(r.tokens for r in runs) / max(1e-9, sum(r.seconds for r in runs))),
            "seconds": round(sum(r.seconds for r in runs), 1),
            "skipped": result.skipped,
            "precision": result.precision,
            "config": asdict(cfg),
            "drill_examples_mixed": mixed,
            "skills": skills[-1] if skills else None,
            "skill_history": skills,
            "drill": None if drilled is None else dict(zip(
                ("steps", "seconds", "first_loss", "final_loss"),
                (drilled.steps, round(drilled.seconds, 1), *_loss_ends(drilled.losses, drill.log_every)),
                strict=True)),
            "finish": None if finished is None else dict(zip(
                ("steps", "seconds", "first_loss", "final_loss"),
                (finished.steps, round(finished.seconds, 1), *_loss_ends(finished.losses, finish.log_every)),
                strict=True)),
        }))
    except BaseException as e:  # report, then let the process fail
        q.put(("error", size, f"{type(e).__name__}: {e}"))
        raise


def train_bases(
    examples: Sequence[SFTExample | str],
    tokenizer_dir: str | os.PathLike,
    models_dir: str | os.PathLike,
    configs: dict[str, TrainConfig],
    *,
    init_seed: int = 0,
    drills: dict[str, TrainConfig] | None = None,
    drill_mix: float = 0.0,
    find_share: dict[str, float] | None = None,
    probes: dict[str, list[SFTExample]] | None = None,
    gates: dict[str, SkillGate] | None = None,
    extend: dict[str, TrainConfig] | None = None,
    max_extensions: int = 0,
    check_every: int = 0,
    finish: dict[str, TrainConfig] | None = None,
    finish_examples: Sequence[SFTExample] = (),
    progress: bool = True,
    timeout_s: float = 3600.0,
) -> dict[str, dict]:
    """Train one base per entry of ``configs`` (size name -> TrainConfig), all in parallel.

    A size in ``drills`` first runs that drill (``toyworld.drill``; ``find_share[size]`` of it
    find examples); ``drill_mix`` adds that fraction of (other) drill examples to the main
    data. With ``probes``, every ``check_every`` steps each size's skills are measured
    (``toyworld.skills``) and recorded; a gated size below its gate (``gates``) after its
    steps trains on with ``extend[size]`` (a short low-lr run, ending once the gate is met), at
    most ``max_extensions`` times; a size that still ends below its gate fails the build with a ``SkillGateError`` naming the model, the skill and the
    measured accuracy. A size in ``finish`` ends with that run on ``finish_examples`` (completion-only
    steps). Writes ``<models_dir>/<size>-base`` for each size; returns size -> training summary. The largest size (``modelzoo.body_params``) keeps
    normal priority, the others are niced. A failing process is a RuntimeError naming its
    size (the others are stopped).
    """
    if not configs:
        raise ValueError("train_bases: no sizes to train")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    models = Path(models_dir)
    models.mkdir(parents=True, exist_ok=True)

    largest = max(configs, key=body_params)
    procs = {
        size: ctx.Process(
            target=_train_one,
            args=(size, str(tokenizer_dir), list(examples), cfg, str(models / f"{size}-base"), init_seed, q,
                  0 if size == largest else SMALL_NICENESS, (drills or {}).get(size), drill_mix,
                  (find_share or {}).get(size, 0.0),
                  probes, check_every, (gates or {}).get(size), (extend or {}).get(size), max_extensions,
                  (finish or {}).get(size), list(finish_examples) if size in (finish or {}) else []),
            name=f"train-{size}",
        )
        for size, cfg in configs.items()
    }
    bars = {
        size: tqdm(total=cfg.max_steps or None, desc=f"{size}-base", position=i, disable=not progress,
                   unit="step", dynamic_ncols=True, leave=True)
        for i, (size, cfg) in enumerate(configs.items())
    }
    results: dict[str, dict] = {}
    start = time.monotonic()
    for p in procs.values():
        p.start()
    try:
        while len(results) < len(procs):
            try:
                kind, size, *payload = q.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [s for s, p in procs.items() if s not in results and not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"base model training for {dead[0]} died (exit code {procs[dead[0]].exitcode})"
                    ) from None
                if time.monotonic() - start > timeout_s:
                    raise RuntimeError(f"base model training took longer than {timeout_s:.0f} s") from None
                continue
            if kind == "progress":
                step, total, loss = payload
                bar = bars[size]
                if step < bar.n:  # the drill ended, the main run starts counting again
                    bar.reset(total=total)
                bar.total = total
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{loss:.3f}")
            elif kind == "skills":
                step, scores = payload
                bars[size].set_postfix_str(" ".join(f"{k} {v:.0%}" for k, v in scores.items()))
            elif kind == "done":
                gate = (gates or {}).get(size)
                results[size] = {**payload[0], "gate": None if gate is None else asdict(gate)}
                if gate is not None and probes:
                    _check_gate(size, gate, results[size])
            else:
                raise RuntimeError(f"base model training for {size} failed: {payload[0]}")
        for p in procs.values():
            p.join(timeout=60)
    finally:
        for bar in bars.values():
            bar.close()
        for p in procs.values():
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        q.close()
        q.join_thread()
    return results


def _check_gate(size: str, gate: SkillGate, summary: dict) -> None:
    scores = summary.get("skills") or {}
    missing = gate.missing(scores)
    if missing:
        skill = missing[0]
        raise SkillGateError(
            f"{size}-base did not learn to {SKILL_TEXT[skill]}: {100 * scores.get(skill, 0.0):.1f}% of the probe "
            f"steps right after {summary['steps']} steps (its gate: {100 * getattr(gate, skill):.0f}%)")


def link_warm(models_dir: str | os.PathLike, source: str = "L-base", name: str = "L-warm") -> str:
    """Make ``<models_dir>/<name>`` point at ``source``: a relative symlink, or a copy where links fail.

    Returns ``"symlink"`` or ``"copy"``.
    """
    models = Path(models_dir)
    link = models / name
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    try:
        link.symlink_to(source, target_is_directory=True)
        return "symlink"
    except OSError:
        shutil.copytree(models / source, link)
        return "copy"
