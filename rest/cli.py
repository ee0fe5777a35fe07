"""The ``rest-react`` command line (DESIGN section 4).

Each subcommand is a small function that loads and validates its config, then calls
library code, which it imports when it runs: ``rest-react --help`` loads no torch or Ray,
and vLLM's CPU workers, which re-import this module, load nothing they do not use. A config problem is one line on stderr and exit code 2, never a
traceback; any other expected failure (a dead search server, a missing model) is one
line and exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.config import Config, ConfigError, load_config
from core.errors import EngineError
from core.search import SearchError
from toyworld.errors import SkillGateError

EXIT_CONFIG = 2


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="YAML config file (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set agent.k_samples=8",
    )


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def cmd_episode(args: argparse.Namespace) -> int:
    """Run one traced episode and print every step."""
    from agent.runner import EpisodeRunner
    from agent.trace import format_trajectory
    from agent.trajectory import Question
    from rest.backends import build_engine, build_search

    cfg = _config(args)
    engine = build_engine(cfg)
    search = None if args.closed_book else build_search(cfg)
    runner = EpisodeRunner(engine, search, cfg.agent)
    (traj,) = runner.run([Question(id="cli", question=args.question)])
    print(format_trajectory(traj))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a model on a question set; write predictions and score.

    The deterministic judge by default; ``--judge-model DIR`` (or ``eval.judge=llm``) adds
    the paper's Check_Answer LLM judge, built once the policy's engine is closed.
    ``--world DIR`` without ``--config`` runs the agent with the step settings the
    world's bases learned (prompt style, snippets per search, search budget: its
    world.json); ``--set`` still wins.
    """
    import dataclasses

    from core.hub import resolve_model
    from evals.datasets import DatasetError, read_dataset, read_world
    from evals.judge import CheckAnswerJudge
    from evals.qa import check_judge, end_reasons_line, evaluate, summary_line, write_result
    from rest.backends import build_engine, build_search
    from toyworld.world import agent_overrides

    defaults = []
    if args.world and not args.config:
        defaults = agent_overrides(args.world)
    judge_sets = ["eval.judge=llm", f"eval.judge_model={args.judge_model}"] if args.judge_model else []
    cfg = load_config(args.config, defaults + args.overrides + judge_sets)
    if args.limit is not None:
        if args.limit < 0:
            raise ConfigError(f"--limit: must be >= 0, got {args.limit}")
        cfg.eval = dataclasses.replace(cfg.eval, limit=args.limit)
    cfg.engine = dataclasses.replace(cfg.engine, model=args.model)
    corpus = args.corpus
    if args.world:
        if not os.path.isdir(args.world):
            raise ConfigError(f"--world: not a directory: {args.world}")

        built = read_world(args.world) or {}  # the config then describes the world it names
        cfg.world = dataclasses.replace(cfg.world, dir=args.world, seed=built.get("seed", cfg.world.seed),
                                        size=built.get("size", cfg.world.size))
        if not (corpus or args.search_url or args.closed_book):
            corpus = os.path.join(args.world, "corpus.jsonl.gz")
            if not os.path.isfile(corpus):
                raise ConfigError(f"--world: no corpus.jsonl.gz in {args.world} (or give --corpus/--search-url)")
    if corpus:
        if not os.path.isfile(corpus):
            raise ConfigError(f"--corpus: file not found: {corpus}")
        cfg.search = dataclasses.replace(cfg.search, backend="bm25", corpus=corpus)
    elif args.search_url:
        cfg.search = dataclasses.replace(cfg.search, backend="http", url=args.search_url)

    check_judge(cfg.eval)
    if cfg.eval.judge == "llm":  # a judge missing offline fails now, not after the whole agent run

        resolve_model(cfg.eval.judge_model)
    try:
        data = read_dataset(args.dataset, cfg.world.dir or None)
    except DatasetError as e:
        raise ConfigError(str(e)) from None
    search = None if args.closed_book else build_search(cfg)
    engine = build_engine(cfg)

    def llm_judge() -> CheckAnswerJudge:
        engine.close()  # the agent is done: the judge's engine may take its memory
        return CheckAnswerJudge.from_config(cfg)

    result = evaluate(engine, search, data.questions, cfg.agent, cfg.eval, dataset=data.name, model=args.model,
                      extras=data.extras, llm_judge=llm_judge if cfg.eval.judge == "llm" else None)
    out = args.out or os.path.join("runs", "eval", f"{Path(args.model.rstrip('/')).name}-{data.name}")
    write_result(result, out)
    print(summary_line(result))
    print(end_reasons_line(result))
    print(f"predictions and score: {out}")
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    """Build a toy world (data, tokenizer, demonstrations, base models, warm-start evals), or reuse it."""
    from toyworld.world import build_world

    try:
        record = build_world(args.out, args.seed, args.size, threads=args.threads)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"world {args.out}: seed {record['seed']}, size {record['size']}, "
          f"{record['demos']['trajectories']} demonstrations (demonstrator accuracy "
          f"{100 * record['demos']['accuracy']:.1f}%), built in {record['timings']['total']:.0f} s")
    for name, ev in record["evals"].items():
        lo, hi = ev["ci95"]
        print(f"  {name:20s} toy-{ev['split']} accuracy {100 * ev['accuracy']:.1f}% "
              f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}, n={ev['n']}), parse rate {100 * ev['parse_rate']:.1f}%")
    for size, m in record["models"].items():
        if m.get("skills"):
            shown = ", ".join(f"{k} {100 * v:.0f}%" for k, v in m["skills"].items() if k != "step")
            print(f"  {size}-base skills on the probe world (greedy): {shown}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run (or ``--resume``) the ReST loop in runs/NAME; config problems exit 2, run failures 1.

    Without ``--address`` an embedded local Ray cluster is started (dashboard on
    127.0.0.1); ``auto`` joins the local node's cluster (what ``ray job submit`` jobs
    do); ``ray://HOST:10001`` connects through Ray Client.
    """
    import time

    import ray

    from evals.targets import verdict, world_closed_book
    from rest.cluster import check_shared_storage, connect
    from rest.loop import ReSTLoop
    from rest.runs import open_run

    if not args.config and not args.resume:
        raise ConfigError("--config: required (or --resume --name NAME)")
    if args.overrides and not args.config:
        raise ConfigError("--set: needs --config (a resumed run keeps its own config.yaml)")
    if args.resume and not args.name:
        raise ConfigError("--resume: needs --name of the run to resume")
    cfg = _config(args) if args.config else None
    name = args.name or f"{os.path.basename(args.config).rsplit('.', 1)[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
    if cfg is not None:
        _world_step(cfg)  # before the run dir: the config resolves against the built world
    run, cfg = open_run(args.runs_dir, name, cfg, args.resume)
    if args.config is None:
        _world_step(cfg)
    print(connect(args.address, cfg), flush=True)
    try:
        if args.address is not None:  # an embedded cluster is this one node: it sees what the driver wrote
            nodes = check_shared_storage(args.runs_dir)
            print(f"run storage: {Path(args.runs_dir).resolve()} seen by all {nodes} node(s)", flush=True)
        loop = ReSTLoop(cfg, run, progress=not args.no_progress)
        report = loop.run_all()
    except ConfigError:
        raise
    except (RuntimeError, ValueError, OSError, ray.exceptions.RayError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {text[:500]} (resume with: rest-react run --resume --name {name})", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    best = {(r["model"], r["dataset"]): r for r in report["evals"]}
    for (model, dataset), r in sorted(best.items()):
        print(f"  {model:3s} {dataset}: gen {r['gen']} accuracy {100 * r['accuracy']:.1f}% (n={r['n']})")
    print(f"run dir: {run.root}")
    if "L" in {r["model"] for r in report["evals"]} and {"S", "XS"} <= set(cfg.models.students):
        print(verdict(report, world_closed_book(cfg.world.dir))["line"])  # the last line: did it work?
    return 0


def _world_step(cfg: Config) -> None:
    """The run's first step: the toy world its config names, built on first use and timed."""
    import time

    from toyworld.world import ensure_world

    if not cfg.world.dir:
        return
    t0 = time.perf_counter()
    ensure_world(cfg.world)
    print(f"[run] world {cfg.world.dir}: ready in {time.perf_counter() - t0:.1f} s", flush=True)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a config at every (world seed, threads) point, one ``rest-react run`` subprocess after another,
    and keep RUNS_DIR/NAME/sweep.{json,md} current; ``--table-only`` only rewrites the table."""
    from rest.sweep import Point, Sweep, parse_ints, validate

    if args.table_only:
        if not args.name:
            raise ConfigError("--table-only: needs --name of the sweep")
        sweep = Sweep(args.runs_dir, args.name)
        if not sweep.points:
            raise ConfigError(f"--name: no runs of sweep {args.name} in {args.runs_dir}")
        doc = sweep.table()
    else:
        if not args.config or args.seeds is None:
            raise ConfigError("sweep: needs --config and --seeds (or --table-only --name NAME)")
        points = [Point(s, t) for s in parse_ints(args.seeds, "--seeds")
                  for t in parse_ints(args.threads, "--threads", minimum=1)]
        validate(args.config, points, args.overrides, args.isa or "native")
        name = args.name or f"{os.path.basename(args.config).rsplit('.', 1)[0]}-sweep"
        doc = Sweep(args.runs_dir, name, args.config, args.overrides, isa=args.isa).run(points)
    counts = doc["summary"]["counts"]["all"]
    failed = sum(r["status"] == "failed" for r in doc["runs"])
    print(f"sweep {doc['name']}: {doc['summary']['finished']}/{len(doc['runs'])} runs finished, "
          f"{failed} failed, all targets met in {counts['met']}/{counts['runs']}")
    print(f"table: {os.path.join(args.runs_dir, doc['name'], 'sweep.md')}")
    return 1 if failed and not args.table_only else 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write report.json, plots/ and report.html into a run dir (other runs given: ablation rows)."""
    from evals.report import ReportError, results_markdown, write_report

    if args.max_trajectories < 0:
        raise ConfigError(f"--max-trajectories: must be >= 0, got {args.max_trajectories}")
    try:
        report = write_report(args.run, tuple(args.compare), max_trajectories=args.max_trajectories)
    except ReportError as e:
        raise ConfigError(str(e)) from None
    print(f"{len(report['evals'])} evaluations, {report['browser']['shown']} rollouts in the browser, "
          f"{len(report['plots'])} plots")
    print(f"report: {os.path.join(args.run, 'report.html')}")
    if args.markdown:
        print("\n" + results_markdown(report), end="")
    return 0


def cmd_serve_search(args: argparse.Namespace) -> int:
    """Serve BM25 over a corpus on the Search-R1 retriever API."""
    from actors.search.server import serve_search_main

    if not os.path.isfile(args.corpus):
        raise ConfigError(f"--corpus: file not found: {args.corpus}")
    if args.workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {args.workers}")
    return serve_search_main(args.corpus, args.host, args.port, args.cache_dir, args.workers)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmarks side by side and write benchmarks/results.json."""
    from benchmarks.run import main as bench_main

    return bench_main(quick=args.quick)


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch every hub model a config names into the Hugging Face cache (offline: check it is there)."""
    from core.hub import download

    return download(_config(args))


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the actor groups of every phase with their CPUs, GPUs and GPU memory, and whether the cluster
    holds them; a config that cannot fit is one line and exit code 1. Starts nothing (``rest.plan``)."""
    from rest.plan import format_plan, plan

    if args.gpu_gib is not None and not args.gpu_gib > 0:
        raise ConfigError(f"--gpu-gib: must be > 0, got {args.gpu_gib}")
    if args.cluster and not os.path.isfile(args.cluster):
        raise ConfigError(f"--cluster: file not found: {args.cluster}")
    p = plan(_config(args), args.cluster, args.gpu_gib)
    print(format_plan(p))
    if p.refusal:
        print(f"error: {p.refusal}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rest-react", description="ReST meets ReAct: self-improving search agents on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("episode", help="run one traced episode and print it")
    _add_config_args(p)
    p.add_argument("--question", required=True, help="the question to answer")
    p.add_argument("--closed-book", action="store_true", help="answer without the search tool")
    p.set_defaults(func=cmd_episode)

    p = sub.add_parser(
        "eval",
        help="evaluate a model on a question set (deterministic or LLM Check_Answer judge)",
        description="Run the agent on every question (one batched run, eval sampling) and score "
        "its answers by normalised exact match, F1 and containment, or with --judge-model by the paper's "
        "5-shot Check_Answer LLM judge (mean and std over eval.judge_runs runs). --world DIR searches BM25 over "
        "DIR/corpus.jsonl.gz unless --corpus/--search-url/--closed-book says otherwise; with --world "
        "and no --config, the agent runs with the world's step settings (world.json: zeroshot prompts, its "
        "snippets per search and search budget).",
    )
    _add_config_args(p, required=False)
    p.add_argument("--model", required=True, help="model directory (overrides engine.model)")
    p.add_argument("--dataset", required=True,
                   help="toy-test | toy-dev | toy-train | bamboogle | hotpotqa-dev | FILE.jsonl")
    p.add_argument("--world", help="toy world directory (world.dir; its corpus unless --corpus/--search-url)")
    p.add_argument("--limit", type=int, help="evaluate only the first N questions (eval.limit)")
    p.add_argument("--out", help="output directory (default: runs/eval/<model dir name>-<dataset>/)")
    p.add_argument("--judge-model", help="score with the Check_Answer LLM judge of this model (eval.judge=llm)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--closed-book", action="store_true", help="answer without the search tool")
    where.add_argument("--corpus", help="BM25 over this JSONL(.gz) passage corpus")
    where.add_argument("--search-url", help="a Search-R1 retriever endpoint, e.g. http://127.0.0.1:8000/retrieve")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "world",
        help="build a toy world + tokenizer + base models (cached)",
        description="Build the toy world at DIR: corpus and question splits, auxiliary worlds, a tokenizer, "
        "noisy demonstrations, XS/S/L base models (DIR/models/, L-warm = L-base) and their warm-start "
        "scores (DIR/world.json). An existing world of the same seed and size is reused as is, unless "
        "it was built by an older version of the size's recipe: then it is rebuilt.",
    )
    p.add_argument("--out", required=True, help="world directory, e.g. worlds/toy-0")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    p.add_argument("--size", choices=("tiny", "default"), default="default",
                   help="tiny: a smoke-test world in a few minutes; default: the CPU default run")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per base-training process (1 and 2 round differently; default: 1)")
    p.set_defaults(func=cmd_world)

    p = sub.add_parser(
        "run",
        help="run the ReST loop (rollout, rank, store, finetune, broadcast, distil, eval, report)",
        description="Run growing-batch ReST in RUNS_DIR/NAME: config.yaml, state.json, batch/, trajectories/, "
        "checkpoints/, evals/, metrics.jsonl, report.json, plots/, report.html. --resume continues a run after its last "
        "finished phase.",
    )
    _add_config_args(p, required=False)
    p.add_argument("--name", help="run name (default: <config name>-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue runs/NAME after its last finished phase")
    p.add_argument("--address", help="Ray cluster: auto | ray://HOST:PORT | HOST:PORT (GCS) (default: an embedded local cluster)")
    p.add_argument("--runs-dir", default="runs", help="where run dirs live (default: runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "sweep",
        help="run a config at several world seeds (and torch thread counts), one run after another, one table",
        description="Run CONFIG at every world seed of --seeds and torch thread count of --threads, each as its "
        "own `rest-react run` (world worlds/toy-S-tT, run RUNS_DIR/NAME-sS-tT; its output in "
        "RUNS_DIR/NAME/logs/), and rewrite RUNS_DIR/NAME/sweep.json and sweep.md after every run: accuracy of "
        "XS, S and L per generation, each target met or not, wall seconds, the mean ± sd over finished runs and "
        "how many runs met each target. Rerunning continues: finished runs are skipped, unfinished ones resumed; "
        "a failed run is recorded and the sweep goes on.",
    )
    _add_config_args(p, required=False)
    p.add_argument("--seeds", help="world seeds: 0-5, 0,3,7 or 1-2,9")
    p.add_argument("--threads", default="1", help="torch threads of base training and learner ranks, e.g. 1,2 "
                   "(default: 1)")
    p.add_argument("--name", help="sweep name (default: <config name>-sweep)")
    p.add_argument("--runs-dir", default="runs", help="where run dirs and the sweep folder live (default: runs)")
    p.add_argument("--isa", choices=("native", "avx2", "generic"), help="force the runs onto another CPU's kernels "
                   "(another rounding; 1 and 2 threads give the toy models identical weights; generic: ATen "
                   "without SIMD, another rounding on any x86 CPU); one per sweep "
                   "(default: native, or what the sweep ran with)")
    p.add_argument("--table-only", action="store_true", help="only rewrite the table from the runs there are")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "report",
        help="write report.json, plots/ and a self-contained report.html into a run dir",
        description="Read a run dir (finished, running or crashed) and write RUN/report.json, RUN/plots/*.png and "
        "RUN/report.html: the Table-1-shaped accuracy table beside the paper's, accuracy per generation, ranker "
        "and step statistics, time per phase and a trajectory browser. The page opens offline.",
    )
    p.add_argument("run", help="run dir, e.g. runs/NAME")
    p.add_argument("compare", nargs="*", help="other run dirs: one ablation row each, beside RUN's")
    p.add_argument("--max-trajectories", type=int, default=300,
                   help="rollouts per generation in the trajectory browser (default: 300)")
    p.add_argument("--markdown", action="store_true", help="also print Table 1 as Markdown (the README's results)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve-search", help="serve BM25 over a corpus on the Search-R1 /retrieve API")
    p.add_argument("--corpus", required=True, help="JSONL or JSONL.gz passages {id,title,text}")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--cache-dir", default=".cache/bm25", help="where the BM25 index is cached")
    p.add_argument("--workers", type=int, default=1,
                   help="search processes, each holding the index (default: 1, a thread of the server)")
    p.set_defaults(func=cmd_serve_search)

    p = sub.add_parser(
        "download",
        help="prefetch every model a config names into the Hugging Face cache",
        description="Resolve every model the config names (engine, policy, students, the judges it uses): hub ids are "
        "downloaded into the Hugging Face cache (HF_HUB_CACHE or HF_HOME; on a cluster, storage every node mounts), "
        "at the commits a run's config.yaml recorded if given one; local directories are checked. With "
        "HF_HUB_OFFLINE=1 nothing is fetched: a model missing from the cache is one error line and exit code 1.",
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "plan",
        help="print each phase's actor groups, their CPUs, GPUs and GPU memory, and whether the cluster holds them",
        description="Resolve the config without starting anything (no Ray, no world build, no download) and print, "
        "per phase of a generation, each actor group with its CPUs, GPUs and estimated GPU memory (vLLM weights and "
        "KV cache at engine.gpu_memory_utilization; the learner's ZeRO-stage states and activations at its "
        "micro-batch and max_len), the peak, and whether the cluster (a Ray cluster.yaml, or the config's own "
        "resource counts) holds it. A config that cannot fit is one line and exit code 1.",
    )
    _add_config_args(p)
    p.add_argument("--cluster", help="a Ray autoscaler cluster.yaml (default: the config's own resource counts)")
    p.add_argument("--gpu-gib", type=float,
                   help="GiB per GPU (default: from the cluster's instance types; 80 without --cluster)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("bench", help="benchmarks, ours vs baselines side by side (benchmarks/results.json)")
    p.add_argument("--quick", action="store_true", help="small sizes: under 5 minutes")
    p.set_defaults(func=cmd_bench)
    return parser


def _quiet_libraries() -> None:
    """Keep stdout for our own output: no accelerator guesses, no per-load progress bars."""
    import torch
    import transformers

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed prints its guess on stdout
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (SearchError, EngineError, SkillGateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
