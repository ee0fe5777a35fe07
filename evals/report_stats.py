"""The numbers of the run report, computed from what a run dir holds (trajectories, state, evals).

Each function takes plain records (trajectory dicts as ``trajectories/gen-<k>.jsonl``
holds them, the ``evals`` list of report.json, ``state.json``'s finished phases) and
returns JSON-ready dicts: histograms are bin edges plus counts, so report.json stays
small and the plots are drawn from report.json alone.

- ``table1``: the paper's Table 1 shape: rows = generations (0 = warm start), columns
  = model sizes, cells = accuracy with its 95% CI.
- ``ranker_stats``: how the ranker's pick relates to the sample the rollout kept (the
  lowest-perplexity parseable one, unless ``rest.continue_with=ranker``), how often
  the K samples were all the same text, and the distribution of its scores.
- ``step_stats``: searches per episode, end reasons, parse failures and generated
  tokens per step kind.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from agent.episode import lowest_nll_parseable
from agent.trajectory import LLM_STEP_KINDS, Step
from core.state import PHASES

#: the paper's published Bamboogle auto-eval accuracies (DESIGN section 1); None = not quoted there
PAPER_TABLE1 = {
    "label": "paper, Bamboogle auto-eval, for shape only",
    "source": "Aksitov et al. 2023, ReST meets ReAct (arXiv 2312.10003), Table 1",
    "columns": ["XS", "S", "L"],
    "rows": [
        {"label": "warm start (prompted)", "cells": {"XS": None, "S": None, "L": 70.3}},
        {"label": "gen 1", "cells": {"XS": None, "S": None, "L": None}},
        {"label": "gen 2", "cells": {"XS": 65.9, "S": 69.7, "L": 76.1}},
    ],
}
SIZE_ORDER = ("XXS", "XS", "S", "M", "L", "XL")
SCORE_BINS = 12


def gen_label(gen: int) -> str:
    return "warm start" if gen == 0 else f"gen {gen}"


def model_order(models: Iterable[str]) -> list[str]:
    """Model names smallest first (XS, S, L), unknown names after, in their given order."""
    names = list(dict.fromkeys(models))
    return sorted(names, key=lambda m: (SIZE_ORDER.index(m) if m in SIZE_ORDER else len(SIZE_ORDER), names.index(m)))


def table1(evals: Sequence[dict[str, Any]], dataset: str) -> dict[str, Any]:
    """One dataset's evals as the paper's Table 1: a row per generation, a cell per model."""
    mine = [e for e in evals if e["dataset"] == dataset]
    columns = model_order(e["model"] for e in mine)
    rows = []
    for gen in sorted({e["gen"] for e in mine}):
        cells = {e["model"]: {"accuracy": e["accuracy"], "ci95": e["ci95"], "n": e["n"],
                              **{k: e[k] for k in ("judge_std", "exact_match") if k in e}}
                 for e in mine if e["gen"] == gen}
        rows.append({"gen": gen, "label": gen_label(gen), "cells": cells})
    judges = sorted({e["judge"] for e in mine})
    return {"dataset": dataset, "columns": columns, "rows": rows, "judge": "; ".join(judges),
            "search": "; ".join(sorted({e.get("search", "") for e in mine}))}


def histogram(values: Sequence[float], bins: int | Sequence[float]) -> dict[str, list]:
    """``{"edges": [...], "counts": [...]}`` of ``values`` (an empty histogram for no values)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"edges": [], "counts": []}
    lo, hi = min(finite), max(finite)
    if isinstance(bins, int) and lo == hi:
        bins = [lo - 0.5, hi + 0.5]
    counts, edges = np.histogram(finite, bins=bins)
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


def llm_steps(trajectories: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for t in trajectories for s in t["steps"] if s["kind"] in LLM_STEP_KINDS and s.get("samples")]


def lowest_perplexity(step: dict[str, Any]) -> int | None:
    """The parseable sample the rollout keeps by default (``agent.episode.lowest_nll_parseable``)."""
    parsed = [True if ok else None for ok in step.get("parse_ok", [])]
    return lowest_nll_parseable(Step.from_dict(step), parsed)


def _agreement(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts and shares for one group of LLM steps (see ``ranker_stats``)."""
    texts = [[x["text"] for x in s["samples"]] for s in steps]
    picked = [s for s in steps if s.get("ranker_best") is not None and s.get("chosen") is not None]
    same_index = sum(s["ranker_best"] == s["chosen"] for s in picked)
    same_text = sum(s["samples"][s["ranker_best"]]["text"] == s["samples"][s["chosen"]]["text"] for s in picked)
    lowest = [(s, lowest_perplexity(s)) for s in picked]
    with_low = [(s, i) for s, i in lowest if i is not None]
    distinct = [s for s, t in zip(steps, texts, strict=True) if len(set(t)) > 1]
    picked_ids = {id(s) for s in picked}
    distinct_picked = [s for s in distinct if id(s) in picked_ids]

    def share(k: int, n: int) -> float | None:
        return round(k / n, 4) if n else None

    return {
        "steps": len(steps),
        "ranked": sum(s.get("scores") is not None for s in steps),
        "no_parseable": sum(s.get("ranker_best") is None for s in steps),
        "identical_samples": share(len(steps) - len(distinct), len(steps)),
        "agree_with_kept": share(same_index, len(picked)),
        "agree_with_kept_text": share(same_text, len(picked)),
        "agree_with_lowest_perplexity": share(sum(s["ranker_best"] == i for s, i in with_low), len(with_low)),
        # where the K samples differ, the only steps where the ranker's choice can matter
        "agree_with_kept_when_samples_differ": share(
            sum(s["ranker_best"] == s["chosen"] for s in distinct_picked), len(distinct_picked)),
    }


def ranker_stats(trajectories: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ranker on one generation's rollouts: agreement with the kept sample, overall and per step kind.

    ``agree_with_kept`` compares indices, ``agree_with_kept_text`` the texts (K equal
    samples agree whatever index the ranker named); scores are of parseable samples.
    """
    steps = llm_steps(trajectories)
    by_kind: dict[str, list] = defaultdict(list)
    for s in steps:
        by_kind[s["kind"]].append(s)
    scores = [v for s in steps if s.get("scores") is not None
              for v, ok in zip(s["scores"], s["parse_ok"], strict=False) if ok]
    best = [s["scores"][s["ranker_best"]] for s in steps if s.get("scores") and s.get("ranker_best") is not None]
    return {
        "overall": _agreement(steps),
        "by_kind": {k: _agreement(by_kind[k]) for k in LLM_STEP_KINDS if by_kind[k]},
        "scores": histogram(scores, SCORE_BINS),
        "best_scores": histogram(best, SCORE_BINS),
    }


def step_stats(trajectories: Sequence[dict[str, Any]], search_budget: int) -> dict[str, Any]:
    """Searches per episode, end reasons, and per LLM step kind: samples, parse failures, tokens."""
    n = len(trajectories)
    searches = [t["searches_used"] for t in trajectories]
    kinds: dict[str, Counter] = defaultdict(Counter)
    for s in llm_steps(trajectories):
        c = kinds[s["kind"]]
        c["steps"] += 1
        c["samples"] += len(s["samples"])
        c["parse_failures"] += list(s.get("parse_ok", [])).count(False)
        c["tokens"] += sum(x["n_tokens"] for x in s["samples"])
    per_kind = {
        k: {"steps": c["steps"], "samples": c["samples"], "parse_failures": c["parse_failures"],
            "parse_failure_rate": round(c["parse_failures"] / c["samples"], 4),
            "tokens": c["tokens"], "tokens_per_sample": round(c["tokens"] / c["samples"], 2)}
        for k in LLM_STEP_KINDS if (c := kinds.get(k))
    }
    samples = sum(c["samples"] for c in kinds.values())
    return {
        "episodes": n,
        "answered": round(sum(t["answer"] is not None for t in trajectories) / n, 4) if n else None,
        "searches_per_episode": round(sum(searches) / n, 3) if n else None,
        "searches_histogram": histogram(searches, [b - 0.5 for b in range(max([search_budget, *searches]) + 2)]),
        "end_reasons": dict(Counter(t["end_reason"].split(": ", 1)[0] for t in trajectories).most_common()),
        "llm_steps_per_episode": round(sum(c["steps"] for c in kinds.values()) / n, 3) if n else None,
        "parse_failure_rate": round(sum(c["parse_failures"] for c in kinds.values()) / samples, 4) if samples else None,
        "by_kind": per_kind,
    }


def training_stats(done: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per fine-tune (L's ``finetune``, each student's ``distil``) from state.json."""
    keys = ("examples", "steps", "loss_first", "loss_final", "tokens_per_s", "fit_seconds", "kept")
    rows = []
    for key, info in sorted(done.items(), key=lambda kv: int(kv[0].split("/")[0])):
        gen, _, phase = key.partition("/")
        fits = {"L": info} if phase == "finetune" else info.get("students", {}) if phase == "distil" else {}
        for model, fit in fits.items():
            rows.append({"gen": int(gen), "model": model, **{k: fit[k] for k in keys if k in fit}})
    return rows


def phase_times(timings: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Seconds per phase per generation, the phases in the order they ran, and each generation's total."""
    seen = {p for per in timings.values() for p in per}
    phases = [p for p in PHASES if p in seen] + sorted(seen - set(PHASES))
    gens = sorted(timings, key=lambda g: int(g.split("-")[1]))
    return {"generations": gens, "phases": phases, "seconds": {g: timings[g] for g in gens},
            "total": {g: round(sum(timings[g].values()), 3) for g in gens}}
