"""The ReST driver: growing-batch self-improvement of the ReAct agent, one timed phase at a time.

``ReSTLoop.generation`` is the algorithm (DESIGN section 2); each phase is a method
below it that reads what the earlier phases left in the run dir, writes its own
output atomically and returns its counters. ``_phase`` times it, logs it (a line on
the terminal, Ray metrics, a line in ``metrics.jsonl``) and marks it finished in
``state.json``, so ``--resume`` re-enters at the first unfinished phase and nothing is
lost or done twice.

Where the fine-tunes start (a choice, documented here and in the README): the paper
grows the batch (gen 2 trains on the gen-1 and gen-2 trajectories together) and
fine-tunes L on it, then distils S and XS "on the same data". We start every
generation's fine-tune of a model from that model's *starting* checkpoint (L: the warm
start, a student: its base) on ALL records so far (each distinct (prompt, target) once,
``rest.distinct_examples``), as ReST-EM does: continuing from
the previous generation's checkpoint would train twice on the older generations'
examples, overweighting them as the batch grows. Rollouts of generation k come from
the gen-(k-1) policy (version k-1), so each generation still improves on the last.

Colocated (``rest.colocate``), the rollout samplers and the learner share the GPUs and
each phase that needs them says so first (``RunCluster.gpus_to``): rollout and broadcast
take them for the samplers (the learner frees its memory, the samplers wake, then the
sync runs), finetune and distil for the learner (the samplers sleep; before the
finetune deeply, their weights discarded, as the broadcast refills them). Every phase's
counters record the groups awake at its end, and the hand-over if it made one (``colocation``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any

from tqdm import tqdm

from actors.rankers.llm_judge import verdict_counters
from agent.trajectory import Question, Trajectory
from core.config import Config, ConfigError
from core.hub import resolve_model
from core.io import read_jsonl, write_jsonl
from core.run_dir import RunDir
from core.seeds import purpose_seed
from core.state import RunState
from evals.datasets import Dataset, read_dataset
from evals.qa import check_judge, write_result
from evals.report import write_report
from evals.targets import warm_start_warning, world_warning
from learner.selection import agreed, apply_scores, clears, tied
from rest.batch import GrowingBatch, step_records
from rest.cluster import RunCluster
from rest.evaluation import EvalPools, evaluate_model, trajectory_counters
from rest.leakage import HeldOut
from rest.metrics import RunMetrics
from rest.workers import make_tasks
from toyworld.rename import renamed

#: losses averaged for the reported "final" learner loss
LOSS_TAIL = 5


class RunError(RuntimeError):
    """A run failed in a way a rerun with ``--resume`` may fix; the message is one line."""


class ReSTLoop:
    """One run of ReST in ``run`` with the (resolved) ``cfg``; Ray must be initialised."""

    def __init__(self, cfg: Config, run: RunDir, progress: bool = True):
        check_judge(cfg.eval)  # a judge the run cannot apply is a config error before any work
        if cfg.rest.rename_examples and not cfg.world.dir:
            raise ConfigError("rest.rename_examples: renames the toy world's name pools; set world.dir (a toy world)")
        self.cfg, self.run = cfg, run
        self.state = RunState.load(run.state)
        self.batch = GrowingBatch(run.batch)
        self.metrics = RunMetrics(run.metrics, run.name)
        self.progress = progress
        self.train = read_dataset(cfg.rest.train_dataset, cfg.world.dir or None)
        if cfg.rest.max_train_questions:
            self.train.questions = self.train.questions[: cfg.rest.max_train_questions]
        self._fitted_policy: int | None = None  # generation whose L weights the learner holds
        gold = None  # question records: only the oracle ranker may see them
        if cfg.ranker.kind == "oracle":
            gold = {q.id: {"answers": list(q.answers), **self.train.extras.get(q.id, {})} for q in self.train.questions}
        self.cluster = RunCluster(cfg, run, [Question(id=q.id, question=q.question) for q in self.train.questions],
                                  lambda: self.held_out.passages, lambda: self.state.version, gold)

    # ================================================================ the algorithm

    def run_all(self) -> dict[str, Any]:
        """Evaluate the warm start (generation 0) once, then run the remaining generations.

        A warm start outside its target band (``evals.targets``: the world's recorded L-base
        score at the start, the measured gen-0 L after its eval) is one warning line, not an error.
        """
        self.say(f"run {self.run.root}: resuming at {self.state.resume_point()}, "
                 f"{len(self.train.questions)} training questions")
        self._no_leakage("before rollout", self.held_out.check_questions(self.train.questions, self.train.name))
        self._warn(world_warning(self.cfg.world.dir))
        try:
            for gen in self.state.remaining_generations(self.cfg.rest.generations):
                if gen == 0:
                    self._phase(0, "eval", self.evaluate)
                    self._warn(self._measured_warm_warning())
                    self._phase(0, "report", self.report)
                else:
                    self.generation(gen)
        finally:
            self.cluster.close()
        return json.loads(self.run.report.read_text())

    def generation(self, gen: int) -> None:
        """One generation of growing-batch ReST (Aksitov et al. 2023, DESIGN section 1):

        1. rollout:   run the agent on every training question (K samples per LLM step at
                      temperature T, continuing with the lowest-perplexity one) with the
                      samplers at policy version gen-1;
        2. rank:      AI feedback scores the K samples of every step (the ranker's best);
        3. store:     the best sample of every step joins the growing batch on disk;
        4. finetune:  L fine-tunes on ALL the batch so far;
        5. broadcast: the new L weights go to every sampler as version gen;
        6. distil:    each student fine-tunes on the same batch;
        7. eval:      every model is evaluated on the eval datasets;
        8. report:    report.json is rewritten with everything so far.
        """
        self._phase(gen, "rollout", self.rollout)
        self._phase(gen, "rank", self.rank)
        self._phase(gen, "store", self.store)
        self._phase(gen, "finetune", self.finetune)
        self._phase(gen, "broadcast", self.broadcast)
        self._phase(gen, "distil", self.distil)
        self._phase(gen, "eval", self.evaluate)
        self._phase(gen, "report", self.report)

    def _phase(self, gen: int, name: str, body: Callable[[int], dict[str, Any]]) -> None:
        """Run one phase unless already finished; time it, log it, then mark it done."""
        if self.state.is_done(gen, name):
            return
        self.say(f"gen {gen} {name} ...")
        t0 = time.perf_counter()
        counters = body(gen)
        seconds = time.perf_counter() - t0
        if self.cfg.colocated:  # who held the shared GPUs: a phase without a hand-over records it too
            counters.setdefault("colocation", {"awake": self.cluster.awake()})
        self.metrics.phase_done(gen, name, seconds, counters)
        self.state.mark(gen, name, {"seconds": round(seconds, 3), **counters},
                        version=gen if name == "broadcast" else None)
        shown = ", ".join(f"{k}={v}" for k, v in counters.items() if not isinstance(v, (dict, list)))
        self.say(f"gen {gen} {name}: {seconds:.1f} s" + (f" ({shown})" if shown else ""))

    # ================================================================ phases

    def rollout(self, gen: int) -> dict[str, Any]:
        """Every training question, ``tpq`` trajectories each, at the current policy version."""
        tpq = self.cfg.rest.trajectories_per_question[min(gen, len(self.cfg.rest.trajectories_per_question)) - 1]
        version = self.state.version
        ids = self.rollout_question_ids(gen)
        tasks = make_tasks(ids, self.cfg.rest.questions_per_task, lambda i: self._seed(gen, f"rollout-{i}"))
        t_phase = time.perf_counter()
        startup = self.cluster.start()  # every group at once: their start-up is part of this phase
        turn = self.cluster.gpus_to("samplers")
        pool = self.cluster.samplers
        before, hidden_before = dict(pool.stats), self.cluster.hidden_passages()
        t0 = time.perf_counter()
        with self._bar(len(ids) * tpq, f"gen {gen} rollout") as bar:
            trajectories = pool.map(tasks, version, tpq, on_result=lambda _t, out: bar.update(len(out)))
        seconds = time.perf_counter() - t0
        per_question = Counter(t["question_id"] for t in trajectories)
        if len({t["id"] for t in trajectories}) != len(trajectories) or set(per_question.values()) != {tpq} \
                or set(per_question) != set(ids):
            raise RunError(f"gen {gen} rollout: expected {tpq} trajectories for each of {len(ids)} questions, "
                           f"got {len(trajectories)} for {len(per_question)}")
        stale = [t["id"] for t in trajectories if t["policy_version"] != version]
        if stale:
            raise RunError(f"gen {gen} rollout: {len(stale)} trajectories not from version {version} ({stale[0]})")
        write_jsonl(self.run.trajectories(gen), trajectories)
        c = trajectory_counters(trajectories)
        self.metrics.rollout(c["episodes"], c["generated_tokens"], c["parse_failures"], seconds)
        delta = {k: pool.stats[k] - before[k] for k in before}
        breakdown = {"phase_s": round(time.perf_counter() - t_phase, 3), "sampler_startup_s": round(startup, 3),
                     "map": pool.last_profile.breakdown()}
        self.metrics.rollout_breakdown(breakdown)
        return {"version": version, "trajectories_per_question": tpq, **c,
                "tokens_per_s": round(c["generated_tokens"] / max(seconds, 1e-9), 1),
                "resubmitted": delta["resubmitted"], "replaced": delta["replaced"],
                "held_out_hidden": self.cluster.hidden_passages() - hidden_before, "rollout_breakdown": breakdown,
                **_colocation(turn)}

    def rollout_question_ids(self, gen: int) -> list[str]:
        """The training questions generation ``gen`` rolls out on: all of them, or with
        ``rest.fresh_questions`` its own disjoint share, so each generation's batch is made on
        questions the policy that makes it has never been fine-tuned on."""
        ids = [q.id for q in self.train.questions]
        if not self.cfg.rest.fresh_questions:
            return ids
        shares = self.cfg.rest.generations
        return ids[(gen - 1) % shares::shares]

    def rank(self, gen: int) -> dict[str, Any]:
        """The rankers score every LLM step; each step keeps its scores and best sample
        (``learner.selection``), in place in the trajectory file. Counted: the steps whose ranker
        left the pick to perplexity (``tie_rate``) and, for the llm-judge, its verdicts that did not
        parse, which above ``ranker.max_unparsed_rate`` fail the phase before anything is written."""
        trajectories = read_jsonl(self.run.trajectories(gen))
        with self._bar(len(trajectories), f"gen {gen} rank") as bar:
            scores = self.cluster.rank(trajectories, on_chunk=bar.update)
        verdicts = {}
        if self.cfg.ranker.kind == "llm-judge":  # a judge that mostly fails to answer ranks by perplexity: refuse
            verdicts, error = verdict_counters(self.cluster.ranker_stats(), self.cfg.ranker.max_unparsed_rate)
            if error:
                raise RunError(f"gen {gen} rank: {error}")
        ranked = [Trajectory.from_dict(t) for t in trajectories]
        ties = []
        for traj in ranked:
            for index, step in enumerate(traj.steps):
                if (traj.id, index) in scores:
                    ties.append(tied(step, scores[(traj.id, index)]))
                    apply_scores(step, scores[(traj.id, index)])
        steps = [s for t in ranked for s in t.steps if s.samples]
        agreement = sum(s.ranker_best is not None and s.ranker_best == s.chosen for s in steps) / max(len(steps), 1)
        write_jsonl(self.run.trajectories(gen), [t.to_dict() for t in ranked])
        self.metrics.agreement(agreement)
        rankable = [t for t in ties if t is not None]
        return {"ranker": self.cfg.ranker.kind, "llm_steps": len(steps), "ranker_agreement": round(agreement, 4),
                "no_parseable": sum(s.ranker_best is None for s in steps),
                "tie_rate": round(sum(rankable) / len(rankable), 4) if rankable else 0.0, **verdicts}

    def store(self, gen: int) -> dict[str, Any]:
        """The best sample of every LLM step of the kept trajectories (all, or with ``rest.keep_trajectories:
        agreed`` those that give their question's majority answer), appended to the growing batch as
        generation ``gen``."""
        trajectories = [Trajectory.from_dict(t) for t in read_jsonl(self.run.trajectories(gen))]
        rolled_out = len(trajectories)
        if self.cfg.rest.keep_trajectories == "agreed":
            ids = agreed(trajectories, self.cfg.rest.min_agreement)
            trajectories = [t for t in trajectories if t.id in ids]
        usable = [r for t in trajectories for r in step_records(gen, t)]
        min_score = self.cfg.ranker.threshold
        records = [r for r in usable if clears(r, min_score)]
        kept = {(r["trajectory_id"], r["step_index"]) for r in records}
        self._no_leakage(f"gen {gen} store", self.held_out.check_trajectories(trajectories, kept))
        llm_steps = sum(len(t.llm_steps()) for t in trajectories)
        self.batch.write_gen(gen, records)
        return {"trajectories_kept": len(trajectories), "trajectories_dropped": rolled_out - len(trajectories),
                "records": len(records), "steps_without_usable_sample": llm_steps - len(usable),
                "below_min_score": len(usable) - len(records), "batch_records": len(self.batch.all(upto=gen))}

    def finetune(self, gen: int) -> dict[str, Any]:
        """L fine-tunes from its starting checkpoint on every record of generations 1..gen."""
        out = self.run.checkpoint("L", gen)
        if _is_checkpoint(out):  # saved before a crash, not yet marked: keep it
            return {"checkpoint": str(out), "kept": True}
        improved = self.cfg.rest.policy_examples == "improved"
        examples, repeats = self._training_examples(gen, improved=improved)
        if not examples:
            why = ("no step where the ranker's pick differs from the rollout's, rest.policy_examples: improved"
                   if improved else "no sampled step parsed")
            raise RunError(f"gen {gen} finetune: the growing batch has no examples ({why}; "
                           f"see {self.run.trajectories(gen)})")
        turn = self.cluster.gpus_to("learner", sleep_level=2)  # the broadcast refills the samplers' weights
        fit = self.cluster.learner.fit(self._local(self.cfg.models.policy), examples, str(out),
                                       seed=self._fit_seed(gen, "fit-L"), name="L")
        self._fitted_policy = gen
        return {**self._fit_counters(fit), "repeats_dropped": repeats, **_colocation(turn)}

    def broadcast(self, gen: int) -> dict[str, Any]:
        """The gen-``gen`` L weights go to every sampler as version ``gen``, checked by checksum."""
        turn = self.cluster.gpus_to("samplers")
        if self._fitted_policy == gen:
            res = self.cluster.learner.broadcast(self.cluster.samplers.actors, version=gen,
                                                 transport=self.cfg.learner.transport)
            info = {"transport": res.transport, "bytes": res.bytes, "checksum": res.checksum,
                    "broadcast_seconds": round(res.seconds, 3)}
        else:  # resumed after the fine-tune: the learner no longer holds the weights, the checkpoint does
            info = {"transport": "checkpoint", "checksum": self.cluster.load_checkpoint_weights(gen)}
        versions = self.cluster.samplers.ping_all()
        if set(versions) != {gen}:
            raise RunError(f"gen {gen} broadcast: samplers hold versions {versions}, expected {gen}")
        return {"version": gen, **info, **_colocation(turn)}

    def distil(self, gen: int) -> dict[str, Any]:
        """Each student fine-tunes from its base on the same records as L."""
        out: dict[str, Any] = {}
        turn: dict[str, Any] = {}
        for name, start in self.cfg.models.students.items():
            ckpt = self.run.checkpoint(name, gen)
            if _is_checkpoint(ckpt):
                out[name] = {"checkpoint": str(ckpt), "kept": True}
                continue
            turn = turn or self.cluster.gpus_to("learner", sleep_level=1)  # the samplers keep the policy
            examples, _ = self._training_examples(gen)
            fit = self.cluster.learner.fit(self._local(start), examples, str(ckpt), seed=self._fit_seed(gen, f"fit-{name}"),
                                           name=name)
            self._fitted_policy = None
            out[name] = self._fit_counters(fit)
        return {"students": out, **_colocation(turn)}

    def evaluate(self, gen: int) -> dict[str, Any]:
        """Every model of generation ``gen`` on every eval dataset, on eval sampler pools the phase starts once (and,
        with ``eval.judge=llm``, re-scored by the Check_Answer judge on its own actor)."""
        datasets = self.eval_sets
        todo = {model: [d for d in datasets if not (self.run.eval_dir(gen, model, d.name) / "score.json").is_file()]
                for model in self.models_at(gen)}
        pools = EvalPools(self.cluster, self.cfg, datasets)
        try:
            with pools, ThreadPoolExecutor(max_workers=self.cluster.eval_concurrency(len(todo))) as threads:
                futures = [threads.submit(self._evaluate_model, pools, gen, model, self.models_at(gen)[model], sets)
                           for model, sets in todo.items() if sets]
                for future in futures:
                    for result in future.result():
                        write_result(result, self.run.eval_dir(gen, result.model, result.dataset))
        finally:
            self.cluster.stop_judge()  # the LLM judge's engine is held only while evaluating
        scores: dict[str, float] = {}
        exact: dict[str, float] = {}  # beside the LLM judge's accuracy
        for model in self.models_at(gen):
            for d in datasets:
                s = json.loads((self.run.eval_dir(gen, model, d.name) / "score.json").read_text())
                scores[f"{model}/{d.name}"] = round(s["accuracy"], 4)
                if s.get("llm_judge"):
                    exact[f"{model}/{d.name}"] = round(s["llm_judge"]["exact_match"], 4)
        return {"accuracy": scores, **({"exact_match": exact} if exact else {})}

    def report(self, gen: int) -> dict[str, Any]:
        """report.json, plots/ and report.html: every finished evaluation (gen 0 = warm start), every
        phase's timing, ranker and step statistics and the trajectory browser (``evals.report``)."""
        report = write_report(self.run.root)
        return {"evals": len(report["evals"]), "plots": len(report["plots"])}

    # ================================================================ helpers of the phases

    def _warn(self, warning: str | None) -> None:
        if warning:
            self.say(warning)

    def _measured_warm_warning(self) -> str | None:
        """A warning when the warm start (gen-0 L) measured on the first eval dataset is outside the target
        band (``evals.targets``): a run from there says little about ReST, so say so before it is spent."""
        if not self.eval_sets:
            return None
        name = self.eval_sets[0].name
        s = json.loads((self.run.eval_dir(0, "L", name) / "score.json").read_text())
        return warm_start_warning(s["accuracy"], s["dataset"], "measured at gen 0")

    def _local(self, model: str) -> str:
        """A model's directory: itself, or a hub id's snapshot at the commit the run pinned at its start."""
        return str(resolve_model(model, self.cfg.models.revisions.get(model)).path)

    @cached_property
    def _eval_datasets(self) -> list[Dataset]:
        """The eval datasets in full, read once."""
        return [read_dataset(name, self.cfg.world.dir or None) for name in self.cfg.rest.eval_datasets]

    @property
    def eval_sets(self) -> list[Dataset]:
        """The eval datasets, cut to ``eval.limit`` questions when it is set."""
        limit = self.cfg.eval.limit or None
        return [dataclasses.replace(d, questions=d.questions[:limit]) for d in self._eval_datasets]

    @cached_property
    def held_out(self) -> HeldOut:
        """What no training example may contain (``rest.leakage``): every eval question in full, not only
        the ``eval.limit`` evaluated."""
        return HeldOut.of(self._eval_datasets)

    def _no_leakage(self, where: str, violations: list[str]) -> None:
        if violations:
            more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
            raise RunError(f"{where}: leakage: {violations[0]}{more}; nothing of it was trained on")

    def models_at(self, gen: int) -> dict[str, str]:
        """Model name -> checkpoint of generation ``gen`` (0: the starting checkpoints)."""
        return self.run.models_at(self.cfg, gen)

    def _evaluate_model(self, pools: EvalPools, gen: int, model: str, path: str, datasets: list[Dataset]) -> list:
        """``model`` on ``datasets``, its questions split across one of the phase's eval pools (``rest.evaluation``)."""
        with self._bar(sum(len(d.questions) for d in datasets), f"gen {gen} eval {model}") as bar:
            return evaluate_model(pools, model, path, datasets, on_done=bar.update)

    def _training_examples(self, gen: int, improved: bool = False) -> tuple[list, int]:
        """What a fine-tune of generation ``gen`` trains on (``GrowingBatch.training_examples``: with ``improved``
        only the steps where the ranker improved on the policy), each example under its own renaming with
        ``rest.rename_examples``; and how many repeats were left out."""
        examples, repeats = self.batch.training_examples(gen, self.cfg.rest.distinct_examples, improved)
        if self.cfg.rest.rename_examples:
            examples = list(renamed(examples, self._fit_seed(gen, "rename")))
        return examples, repeats

    def _fit_counters(self, fit) -> dict[str, Any]:
        tail = fit.losses[-LOSS_TAIL:]
        loss = sum(tail) / len(tail) if tail else float("nan")
        self.metrics.losses(fit.model, fit.losses)
        return {"checkpoint": fit.out_dir, "examples": fit.examples, "steps": fit.steps,
                "loss_first": round(fit.losses[0], 4) if fit.losses else None, "loss_final": round(loss, 4),
                "tokens_per_s": round(fit.tokens_per_s, 1), "fit_seconds": round(fit.seconds, 2)}

    def _seed(self, gen: int, what: str) -> int:
        """A sampling seed: it depends only on agent.seed, the generation and what it is for."""
        return purpose_seed(self.cfg.agent.seed, gen, what)

    def _fit_seed(self, gen: int, what: str) -> int:
        """A fine-tune's seed: it depends only on learner.seed, the generation and what it is for."""
        return purpose_seed(self.cfg.learner.seed, gen, what)

    # ================================================================ terminal

    def say(self, text: str) -> None:
        print(f"[rest] {text}", flush=True)

    def _bar(self, total: int, desc: str) -> tqdm:
        tty = sys.stderr.isatty()
        return tqdm(total=total, desc=desc, unit="ep", disable=not self.progress, mininterval=0.5 if tty else 15,
                    file=sys.stderr, leave=tty)


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file()


def _colocation(turn: dict[str, Any]) -> dict[str, Any]:
    """A phase's counters on the shared GPUs (``RunCluster.gpus_to``): none when the run is not colocated."""
    return {"colocation": turn} if turn else {}

