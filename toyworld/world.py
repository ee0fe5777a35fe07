"""Build a whole toy world: data, tokenizer, demonstrations, base models, their warm-start scores.

``build_world(out_dir, seed, size, threads=1)`` runs seven timed phases and records them
in ``<world>/world.json``:

1. data: ``toyworld.build.build_world_data`` (target corpus and splits, auxiliary worlds);
2. demos: the noisy demonstrator (``toyworld.demos``) on the auxiliary questions,
   driving the real agent over BM25 on each auxiliary corpus (``<world>/demos/``);
3. tokenizer: a byte-level BPE trained on the target and auxiliary corpora, the
   auxiliary questions and rendered step prompts (``<world>/tokenizer/``);
4. texts: the demonstrations and auxiliary passages as training texts, each renamed
   on its own (``toyworld.rename``), first mentions of names carrying no loss;
5. probes: the skill probes, from a world no base trains on (``toyworld.skills``);
6. train: XS, S and L bases trained in parallel (``toyworld.base_models``): a drill
   (``toyworld.drill``), then the texts with drill examples mixed in, their skills
   measured as they train and gated at the end, then (tiny) a finishing run on the
   demonstration steps alone (``<world>/models/{XS,S,L}-base``; ``L-warm`` links to ``L-base``);
7. eval: every base acting in the target world on toy-dev with search, and L-warm closed
   book (no search) on toy-test, greedy. The bases on toy-test are what a run's gen-0 eval
   measures (the same models, the same greedy agent), so the build leaves that to the run.

Nothing from the target world's questions is trained on; its corpus only shapes the
tokenizer. The world is built in a temporary sibling directory and renamed into place
at the end, so a crash never leaves a half world; ``world.json`` is the completion
mark, and a later call with the same seed, size and threads returns it without rebuilding,
unless the size's recipe has changed since (``Recipe.version``, recorded as
``recipe_version``): that world is rebuilt and replaced once the new one is complete.

``world_paths(cfg)`` is the one place a config's world-dependent paths are
filled in (engine.model -> L-warm, search.corpus -> the world's corpus).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from actors.engines.hf import HFEngine
from core.config import WORLD_MODELS, AgentConfig, Config, ConfigError, EvalConfig, WorldConfig
from evals.datasets import WORLD_JSON, load_dataset, read_world
from evals.qa import evaluate
from learner.data import LMText, SFTExample
from learner.trainer import TrainConfig
from toyworld import pools
from toyworld.base_models import link_warm, train_bases
from toyworld.build import aux_seed, build_world_data, iter_corpus, load_questions
from toyworld.demos import WorldFacts, demonstrate
from toyworld.graph import WorldSize, make_world
from toyworld.modelzoo import train_tokenizer
from toyworld.qwen2 import as_qwen2
from toyworld.rename import first_mentions, renamed
from toyworld.render import render_world
from toyworld.skills import SkillGate, probe_examples

SIZES = ("XS", "S", "L")
#: the agent the demonstrations are recorded with; configs/toy.yaml must agree on these fields
TOY_AGENT = AgentConfig(prompt_style="zeroshot", search_budget=6, topk=2, max_new_tokens=64)


@dataclass(frozen=True)
class Recipe:
    """Everything a build chooses besides the seed: one per size preset."""

    world: WorldSize
    n_aux: int = 2
    #: demonstrations per auxiliary world (0 = one per auxiliary question)
    demos_per_aux: int = 0
    #: per-decision mistake probability of the demonstrator
    noise: float = 0.1
    #: probability that a self-check fixes a wrong answer its notes contradict
    fix_rate: float = 0.5
    #: BPE vocabulary: 3,072 makes every name word one token both after a space and after a quote
    vocab_size: int = 3072
    #: copies of the name-word list in the tokenizer's training text (see ``_tokenizer_texts``)
    name_list_copies: int = 20
    #: training run per model size (sizes absent here are not built)
    train: dict[str, TrainConfig] = field(default_factory=dict)
    #: first phase per size: the copy drill (``toyworld.drill``); sizes absent here are not drilled
    drills: dict[str, TrainConfig] = field(default_factory=dict)
    #: drill examples mixed into the main data, as a fraction of it (keeps the copying from fading)
    drill_mix: float = 0.0
    #: per size, the share of its drill (and of its mixed-in drill examples) that are find examples
    #: (``toyworld.drill``); sizes absent here drill on copy examples only
    find_share: dict[str, float] = field(default_factory=dict)
    #: per size, the probe accuracy per skill a base must reach (``toyworld.skills``); absent: not probed
    gates: dict[str, SkillGate] = field(default_factory=dict)
    #: per gated size, what it trains on with while its skills are below its gate after its steps:
    #: a short low-lr run that ends once the gate is met (the build's budget is ``max_extensions`` of them)
    extend: dict[str, TrainConfig] = field(default_factory=dict)
    max_extensions: int = 0
    #: per size, a last run on the demonstration steps alone, completion-only and not renamed (the
    #: prompts the agent will show it): a base trained for seconds emits a parseable step only after
    #: it (the tiny recipe); sizes absent here end with their main run
    finish: dict[str, TrainConfig] = field(default_factory=dict)
    #: bump when the preset's recipe changes what it builds: a cached world of another version
    #: (``world.json`` ``recipe_version``; absent = 1) is rebuilt instead of reused
    version: int = 1
    #: steps between two skill measurements (recorded in world.json; the gate is checked after the last)
    check_every: int = 250
    #: demonstrations trained as plain language modelling (every token a target), not completion-only
    full_text: bool = True
    #: every training text under its own renaming (``toyworld.rename``), so facts cannot be memorised
    rename: bool = True
    #: no loss on a name word or year a text has not shown yet (``toyworld.rename.first_mentions``)
    mask_first_mentions: bool = False
    #: evaluate on the first N test questions (0 = all)
    eval_limit: int = 0
    #: evaluation processes at once
    eval_workers: int = 2


def _train(steps: int, lr: float, batch_size: int = 16, **kw) -> TrainConfig:
    """fp32 on every CPU: "auto" trains in bf16 where the CPU has it and fp32 elsewhere, and the
    bases then differ by far more than rounding from one machine to the next. Weight decay 0.01
    on the matrices (a from-scratch run; the fine-tunes use none)."""
    return TrainConfig(max_steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 25),
                       weight_decay=0.01, max_len=320, log_every=10, precision="fp32", **kw)


#: the tiny bases' finishing run on the demonstration steps (the tiny world's 1,121 steps, batches of 16).
#: Measured on world seed 0: after 150 steps L-warm's first decision was ``Keep()`` and a smoke ReST
#: generation stored no record; after 300 it searched (its queries rarely copy the question's names:
#: 40 steps of texts teach no copying) and stored 17. S and XS, which learn it faster, and whose
#: parseable steps only make the smoke run's distillation and evals mean something, get 150.
FINISH_TINY = {"L": _train(300, 3e-3), "S": _train(150, 3e-3), "XS": _train(150, 3e-3)}

#: the students' gate, a floor rather than a guarantee: the small bases below it at world seeds 3 and 5
#: (AVX2: copy 15% or 23%, or answer 42%) ended gen 2 below the XS target or near zero, but a base
#: above it can miss too (seed 5 on AVX-512: XS copy 43%, gen 2 XS 24.7 < 39.6) (docs/world-build.md)
SMALL_GATE = SkillGate(copy=0.3, query=0.85, answer=0.8)

#: the default's alternatives and their measured skills and warm starts: docs/world-build.md.
#: S is L at half its depth, XS is 96 wide; both train as one.
RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        world=WorldSize(),
        noise=0.15,
        train={"XS": _train(2000, 2.5e-3), "S": _train(2000, 2.5e-3), "L": _train(2000, 2e-3)},
        drills={"XS": _train(2500, 1e-3, stop_below=0.05), "S": _train(2500, 1e-3, stop_below=0.05),
                "L": _train(3000, 1e-3, stop_below=0.01)},
        drill_mix=0.1,
        find_share={"L": 0.5, "S": 0.5, "XS": 0.5},
        mask_first_mentions=True,
        # a base below its gate after its steps trains on, 500 steps at a time at a tenth of its lr, until
        # it meets it: world seed 2's L ended at query 89%, and on AVX2 seed 5's XS at copy 23% and seed 3's
        # S at copy 15% (docs/world-build.md)
        gates={"L": SkillGate(copy=0.5, query=0.9, answer=0.8), "S": SMALL_GATE, "XS": SMALL_GATE},
        extend={"L": _train(500, 2e-4), "S": _train(500, 2.5e-4), "XS": _train(500, 2.5e-4)},
        max_extensions=2,
        check_every=250,
        version=3,  # 2: S and XS gated and extended as L is; 3: S 128 wide, the copy gate reads citations
    ),
    "tiny": Recipe(
        world=WorldSize.tiny(),
        demos_per_aux=60,
        train={s: _train(40, 3e-3, batch_size=32) for s in SIZES},
        drills={s: _train(10, 1e-3) for s in SIZES},
        drill_mix=0.1,
        # 40 steps teach a tiny base the texts but not the step grammar: without this its rollouts
        # almost never parse and a ReST generation stores nothing (issue 22)
        finish=FINISH_TINY,
        eval_limit=10,
        version=2,  # 2: the finishing run on the demonstration steps
    ),
}


# ---------------------------------------------------------------- the build


def build_world(out_dir: str | os.PathLike, seed: int, size: str = "default", *, threads: int = 1,
                progress: bool = True) -> dict:
    """Build (or return the cached) toy world at ``out_dir``; returns its ``world.json`` record.

    ``threads`` is each base-training process's torch threads: 1 and 2 reduce in another
    order, so they build different bases from one seed, as another CPU would.
    """
    if size not in RECIPES:
        raise ValueError(f"unknown world size {size!r} (known: {', '.join(RECIPES)})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    out = Path(out_dir)
    recipe = RECIPES[size]
    cached = read_world(out)
    if cached is not None:
        have = (cached.get("seed"), cached.get("size"), cached.get("threads", 1))
        if have != (seed, size, threads):
            raise ValueError(f"{out} holds a world of seed {have[0]} size {have[1]!r} threads {have[2]}, "
                             f"not seed {seed} size {size!r} threads {threads}: choose another directory")
        built_by = cached.get("recipe_version", 1)
        if built_by == recipe.version:
            return cached
        if progress:
            print(f"[world] {out} was built by version {built_by} of the {size!r} recipe, not {recipe.version}: "
                  "rebuilding it", flush=True)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not a built toy world (no {WORLD_JSON}): refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        recipe = dataclasses.replace(recipe, **{part: {k: dataclasses.replace(c, num_threads=threads)
                                                       for k, c in getattr(recipe, part).items()}
                                                for part in ("train", "drills", "extend", "finish")})
        record = _build(tmp, seed, size, recipe, threads, progress)
        _move_into_place(tmp, out, stale=cached is not None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _move_into_place(built: Path, out: Path, stale: bool) -> None:
    """Rename the complete world ``built`` to ``out``. An empty ``out`` goes first; a ``stale`` world is
    moved aside, then deleted once ``built`` is in its place (put back if that rename fails), so ``out``
    is never half a world, only absent for the moment between the two renames."""
    if not stale:
        if out.exists():
            out.rmdir()  # empty, checked by the caller
        os.replace(built, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.stale-", dir=out.parent))
    try:
        os.replace(out, aside / out.name)
        try:
            os.replace(built, out)
        except BaseException:
            os.replace(aside / out.name, out)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


#: the step settings a world's base models learned (world.json "agent"); an eval without a config uses them
AGENT_STEP_KEYS = ("prompt_style", "search_budget", "topk", "max_new_tokens", "self_checks")


def agent_overrides(world_dir: str | os.PathLike) -> list[str]:
    """``agent.KEY=VALUE`` overrides that run the agent as the world's demonstrations did.

    A base that saw two snippets per search and six searches cites link ids that a
    three-snippet run would never show it, so evaluating it with the generic agent
    defaults measures the mismatch, not the model. Worlds without a manifest get ``TOY_AGENT``'s.
    """
    record = read_world(world_dir) or {}
    agent = {**dataclasses.asdict(TOY_AGENT), **record.get("agent", {})}
    return [f"agent.{k}={agent[k]}" for k in AGENT_STEP_KEYS]


class _Phases:
    """Wall time of each build phase, printed as it ends."""

    def __init__(self, verbose: bool):
        self.seconds: dict[str, float] = {}
        self.verbose = verbose

    def __call__(self, name: str):
        phases = self

        class _Timer:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                phases.seconds[name] = round(time.perf_counter() - self.t0, 1)
                if phases.verbose and exc[0] is None:
                    print(f"[world] {name}: {phases.seconds[name]:.1f} s", flush=True)

        return _Timer()


def _build(root: Path, seed: int, size: str, recipe: Recipe, threads: int, progress: bool) -> dict:
    phase = _Phases(progress)
    cache = root / ".cache" / "bm25"
    with phase("data"):
        manifest = build_world_data(root, seed, recipe.world, n_aux=recipe.n_aux)
    with phase("demos"):
        demos = _demonstrations(root, seed, recipe, cache)
    with phase("tokenizer"):
        train_tokenizer(_tokenizer_texts(root, recipe, demos), root / "tokenizer", vocab_size=recipe.vocab_size)
    with phase("texts"):
        examples = _training_texts(demos, _aux_passages(root, recipe), recipe, seed)
    with phase("probes"):
        probes = probe_examples(root, seed, recipe.world, TOY_AGENT) if recipe.gates else None
    with phase("train"):
        trained = train_bases(examples, root / "tokenizer", root / "models", recipe.train, init_seed=seed,
                              drills=recipe.drills, drill_mix=recipe.drill_mix, find_share=recipe.find_share,
                              probes=probes, gates=recipe.gates, extend=recipe.extend,
                              max_extensions=recipe.max_extensions, check_every=recipe.check_every,
                              finish=recipe.finish,
                              finish_examples=[ex for d in demos.values() for ex in d.examples()],
                              progress=progress)
        warm = link_warm(root / "models") if "L" in trained else None
    with phase("eval"):
        evals = evaluate_bases(root, [s for s in SIZES if s in trained], recipe, cache)
    shutil.rmtree(root / ".cache", ignore_errors=True)
    demo_stats = {f"aux{i}": d.stats() for i, d in demos.items()}
    record = {
        "seed": seed,
        "threads": threads,
        "size": size,
        "recipe_version": recipe.version,
        "world_size": dataclasses.asdict(recipe.world),
        "aux_seeds": [a["seed"] for a in manifest["aux"]],
        "questions": manifest["questions"],
        "agent": dataclasses.asdict(TOY_AGENT),
        "demos": {
            "noise": recipe.noise,
            "fix_rate": recipe.fix_rate,
            "trajectories": sum(s["trajectories"] for s in demo_stats.values()),
            "steps": sum(s["steps"] for s in demo_stats.values()),
            "accuracy": round(sum(d.accuracy * len(d.demos) for d in demos.values())
                              / max(1, sum(len(d.demos) for d in demos.values())), 4),
            "per_aux": demo_stats,
        },
        "training_sequences": {"demo_steps": sum(len(d.examples()) for d in demos.values()),
                               "passages": len(examples) - sum(len(d.examples()) for d in demos.values())},
        "base_training": {"full_text": recipe.full_text, "rename": recipe.rename,
                          "drills": {s: dataclasses.asdict(c) for s, c in recipe.drills.items()},
                          "drill_mix": recipe.drill_mix, "find_share": recipe.find_share,
                          "gates": {k: dataclasses.asdict(g) for k, g in recipe.gates.items()},
                          "extend": {k: dataclasses.asdict(c) for k, c in recipe.extend.items()},
                          "max_extensions": recipe.max_extensions,
                          "check_every": recipe.check_every,
                          "finish": {s: dataclasses.asdict(c) for s, c in recipe.finish.items()}},
        "tokenizer": {"vocab_size": recipe.vocab_size},
        "models": {s: {**trained[s], "dir": f"models/{s}-base"} for s in trained},
        "warm": {"dir": "models/L-warm", "source": "models/L-base", "how": warm} if warm else None,
        "evals": evals,
        "timings": phase.seconds,
    }
    record["timings"]["total"] = round(sum(phase.seconds.values()), 1)
    (root / WORLD_JSON).write_text(json.dumps(record, indent=1) + "\n")
    return record


# ---------------------------------------------------------------- phases


def _aux_dir(root: Path, i: int) -> Path:
    return root / "aux" / str(i)


def _demonstrations(root: Path, seed: int, recipe: Recipe, cache: Path) -> dict:
    """Demonstrations per auxiliary world (its graph is rebuilt from its seed to look facts up)."""
    import gzip

    from actors.search.bm25 import BM25Search

    target_triples = make_world(seed, recipe.world).triples()
    out: dict = {}
    for i in range(recipe.n_aux):
        aux = make_world(aux_seed(seed, i), recipe.world, avoid=target_triples)
        facts = WorldFacts(aux, render_world(aux))
        records = load_questions(_aux_dir(root, i) / "questions.jsonl")
        if recipe.demos_per_aux:
            records = records[: recipe.demos_per_aux]
        search = BM25Search(_aux_dir(root, i) / "corpus.jsonl.gz", cache_dir=cache)
        demos = demonstrate(records, facts, search, TOY_AGENT, noise=recipe.noise, fix_rate=recipe.fix_rate,
                            seed=seed * 1000 + i)
        out[i] = demos
        path = root / "demos" / f"aux{i}.jsonl.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for d in demos.demos:
                row = {"gold": d.gold, "correct": d.correct, "noise": d.noise_events,
                       "trajectory": d.trajectory.to_dict()}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def _aux_passages(root: Path, recipe: Recipe) -> Iterator[str]:
    """Language-modelling texts: every auxiliary passage as ``title\\ntext``."""
    for i in range(recipe.n_aux):
        for p in iter_corpus(_aux_dir(root, i) / "corpus.jsonl.gz"):
            yield f"{p['title']}\n{p['text']}"


def _training_texts(demos: dict, passages: Iterable[str], recipe: Recipe,
                    seed: int) -> list[SFTExample | LMText | str]:
    """The bases' data: every demonstration step, then every auxiliary passage, shaped by the recipe.

    With ``full_text`` a step is one language-modelling text (prompt and completion):
    a step's prompt is itself worth learning (the notes copy the snippets, the queries
    copy the notes), and completion-only training saw too few copies to learn them.
    With ``rename`` each text gets its own names (``toyworld.rename``).
    """
    steps = [ex for d in demos.values() for ex in d.examples()]
    texts: list[SFTExample | LMText | str] = [ex.prompt + ex.completion for ex in steps] if recipe.full_text else steps
    texts += list(passages)
    texts = list(renamed(texts, seed)) if recipe.rename else texts
    if recipe.mask_first_mentions:
        texts = [LMText(t, first_mentions(t)) if isinstance(t, str) else t for t in texts]
    return texts


def _tokenizer_texts(root: Path, recipe: Recipe, demos: dict) -> Iterator[str]:
    """Target and auxiliary passages, auxiliary questions, one in four demonstrations' steps, name words.

    A name's first word inside a literal follows a quote, not a space (``Search("Ruth
    Miller born")``, ``"Louth [link_id=4]"``), and byte-level BPE gives ``Ruth`` and
    `` Ruth`` different tokens. Measured: with the world text alone, 101 of 546 name
    words were one token after a quote, and answers such as ``"Louth`` split into
    ``L outh``, which a tiny model must then spell instead of copy. The name-word list,
    written in both forms, makes each form one token (546 of 546 at 3,072).
    """
    for p in iter_corpus(root / "corpus.jsonl.gz"):
        yield f"{p['title']}\n{p['text']}"
    yield from _aux_passages(root, recipe)
    for i in range(recipe.n_aux):
        for q in load_questions(_aux_dir(root, i) / "questions.jsonl"):
            yield q["question"]
    for d in demos.values():
        for demo in d.demos[::4]:
            for ex in demo.examples():
                yield ex.prompt + ex.completion
    names = " ".join(f'"{w} {w}' for w in pools.name_words())
    for _ in range(recipe.name_list_copies):
        yield names


# ---------------------------------------------------------------- warm-start evaluation


def _eval_job(model_dir: str, corpus: str | None, cache_dir: str, questions: str, limit: int) -> dict:
    """One evaluation in its own process (one torch thread): greedy, one sample per step."""
    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    from actors.search.bm25 import BM25Search

    engine = HFEngine(model_dir, threads=1)
    search = BM25Search(corpus, cache_dir=cache_dir) if corpus else None
    result = evaluate(engine, search, load_dataset(questions), TOY_AGENT, EvalConfig(limit=limit))
    stats = result.runner_stats
    return {
        "accuracy": round(result.accuracy, 4),
        "ci95": [round(x, 4) for x in result.ci95],
        "n": result.n,
        "parse_rate": round(1 - stats["parse_failures"] / max(1, stats["samples"]), 4),
        "end_reasons": result.end_reasons,
        "searches_per_episode": round(result.searches_per_episode, 2),
        "seconds": round(result.seconds, 1),
    }


def evaluate_bases(root: Path, sizes: list[str], recipe: Recipe, cache: Path) -> dict:
    """Each base on toy-dev with search and L-warm closed book on toy-test, in parallel processes.

    Returns ``{"<size>-base": {...}, "L-warm-closed-book": {...}}`` with accuracy, its Wilson
    95% CI, the share of sampled steps that parsed and the end reasons. Dev is the split a
    recipe may be set by (test never is); the bases' test scores are a run's gen-0 eval, which
    would only repeat them here (docs/world-build.md). Closed book is the
    leakage check of the target world's test questions, so it is measured on them.
    """
    import multiprocessing as mp

    from actors.search.bm25 import BM25Search

    corpus = str(root / "corpus.jsonl.gz")
    BM25Search(corpus, cache_dir=cache)  # build the index once, before the workers load it
    jobs: dict[str, tuple[str, str, str | None]] = {}  # name -> (model, split, corpus or closed book)
    for s in sorted(sizes, key=lambda s: -SIZES.index(s)):  # the slowest (L) first
        jobs[f"{s}-base"] = (f"{s}-base", "dev", corpus)
        if s == "L":
            jobs["L-warm-closed-book"] = ("L-warm", "test", None)
    with mp.get_context("spawn").Pool(processes=max(1, min(recipe.eval_workers, len(jobs)))) as pool:
        pending = {name: pool.apply_async(_eval_job, (str(root / "models" / model), search, str(cache),
                                                      str(root / "questions" / f"{split}.jsonl"), recipe.eval_limit))
                   for name, (model, split, search) in jobs.items()}
        return {name: {"split": jobs[name][1], **res.get(timeout=3600)} for name, res in pending.items()}


# ---------------------------------------------------------------- configs


def ensure_world(world_cfg: WorldConfig) -> Path:
    """The world directory a config names, built on first use (see ``build_world``)."""
    if not world_cfg.dir:
        raise ConfigError("world.dir: required to use the toy world (e.g. worlds/toy-0)")
    try:
        build_world(world_cfg.dir, world_cfg.seed, world_cfg.size, threads=world_cfg.threads)
    except ValueError as e:
        raise ConfigError(f"world: {e}") from None
    if world_cfg.arch == "qwen2":
        for name in WORLD_MODELS:
            as_qwen2(Path(world_cfg.dir) / "models" / name, world_cfg.model_path(name))
    return Path(world_cfg.dir)


def world_paths(cfg: Config) -> Config:
    """``cfg`` with its empty world-dependent paths filled from ``world.dir``; nothing is built.

    engine.model empty -> the world's L-warm (``WorldConfig.model_path``); search.corpus empty (bm25) ->
    ``<world>/corpus.jsonl.gz``. Paths set explicitly are kept. Without world.dir the
    config is returned unchanged.
    """
    need_model = not cfg.engine.model
    need_corpus = cfg.search.backend == "bm25" and not cfg.search.corpus
    if not cfg.world.dir or not (need_model or need_corpus):
        return cfg
    world = Path(cfg.world.dir)
    cfg = dataclasses.replace(cfg)
    if need_model:
        cfg.engine = dataclasses.replace(cfg.engine, model=str(cfg.world.model_path("L-warm")))
    if need_corpus:
        cfg.search = dataclasses.replace(cfg.search, corpus=str(world / "corpus.jsonl.gz"))
    return cfg


def with_world_paths(cfg: Config) -> Config:
    """``world_paths(cfg)``, building the world first when a path comes from it (``episode``, ``eval``)."""
    if cfg.world.dir and (not cfg.engine.model or (cfg.search.backend == "bm25" and not cfg.search.corpus)):
        ensure_world(cfg.world)
    return world_paths(cfg)
