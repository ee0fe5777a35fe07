"""Did the run do what the embedded default promises? One verdict from a run's report.

The toy default is judged by a few thresholds (docs/sweeps.md), all on the first eval
dataset, in accuracy points:

- the warm start (gen-0 L) lies in its band, 15-50%: below it ReST has too few right
  rollouts to learn from, above it there is little left to gain, and either way the run
  says little about ReST;
- the last generation's L gains at least 10 points over the warm start,
- and L rises at every generation;
- the last generation's S ends between XS and L (inclusive);
- the last generation's XS reaches 0.9 x the warm-start L (the paper's XS: 0.94);
- closed book (no search), the warm start answers at most 2%, when the world recorded it:
  a gain then comes from searching, not from memorised test facts.

``verdict(report, closed_book)`` reads ``report["evals"]`` (rows ``{"gen", "model",
"dataset", "accuracy", "n"}``, accuracy a fraction) and returns every check with its value
and what it needs, whether all were met, and one sentence that leads with the outcome.
Checks that need a generation not finished yet are "not yet measurable" (``met: None``),
not failures; checks of a model the run does not have (no S, no XS) are left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from evals.datasets import read_world

#: small enough to absorb float noise in a difference of accuracies, far below one question in 600
EPS = 1e-9


@dataclass(frozen=True)
class Targets:
    """The thresholds of a good toy run, in accuracy points (percent)."""

    warm_low: float = 15.0
    """Lowest warm-start L accuracy worth running ReST from."""
    warm_high: float = 50.0
    """Highest warm-start L accuracy that leaves room to improve."""
    l_gain: float = 10.0
    """Points the last generation's L must gain over the warm start."""
    xs_of_warm: float = 0.9
    """The last generation's XS must reach this multiple of the warm-start L."""
    closed_book_max: float = 2.0
    """Most a closed-book warm start may answer (where the world measured it)."""
    generations: int = 2
    """Generations the generation checks need finished (warm start -> gen 1 -> gen 2)."""

    @property
    def band(self) -> str:
        return f"{self.warm_low:g}-{self.warm_high:g}%"

    def in_band(self, percent: float) -> bool:
        return self.warm_low - EPS <= percent <= self.warm_high + EPS


#: check name -> how a table or a count names it
LABELS = {
    "warm_band": "warm L in band",
    "l_gain": "L gain",
    "l_rising": "L rising",
    "s_between": "S between XS and L",
    "xs_vs_warm": "XS vs warm L",
    "closed_book": "closed book",
}


def _pct(x: float) -> str:
    return f"{x:.1f}"


def _arrow(values: list[float]) -> str:
    return " -> ".join(_pct(v) for v in values)


def _check(met: bool | None, value: Any, need: Any) -> dict[str, Any]:
    return {"met": met, "value": value, "need": need}


def accuracy_by_model(report: dict[str, Any]) -> tuple[str | None, dict[str, dict[int, float]]]:
    """(the first eval dataset, model -> generation -> accuracy % on it)."""
    rows = report.get("evals") or []
    if not rows:
        return None, {}
    dataset = rows[0]["dataset"]
    acc: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["dataset"] == dataset:
            acc.setdefault(r["model"], {})[int(r["gen"])] = 100.0 * float(r["accuracy"])
    return dataset, acc


def _last_generation(report: dict[str, Any], acc: dict[str, dict[int, float]]) -> int:
    """The generation the run ends at: its config's ``rest.generations``, else the last evaluated."""
    planned = (report.get("setup") or {}).get("generations")
    if isinstance(planned, int):
        return planned
    return max((g for gens in acc.values() for g in gens), default=0)


def verdict(report: dict[str, Any], closed_book: float | None, targets: Targets = Targets()) -> dict[str, Any]:
    """``{"met", "checks", "line"}`` for ``report`` (see the module docstring).

    ``closed_book`` is the closed-book warm-start L accuracy as a fraction, or None when
    unknown (the check is then left out). ``met`` is True when every check is met, False
    when one failed, None when none failed but some cannot be measured yet.
    """
    t = targets
    dataset, acc = accuracy_by_model(report)
    L = acc.get("L", {})
    if 0 not in L:
        what = f"no warm-start L evaluation on {dataset}" if dataset else "no evaluation yet"
        return {"met": None, "checks": {}, "line": f"target not yet measurable: {what}"}
    warm = L[0]
    last = _last_generation(report, acc)
    checks: dict[str, dict[str, Any]] = {
        "warm_band": _check(t.in_band(warm), round(warm, 2), [t.warm_low, t.warm_high])}
    if closed_book is not None:
        cb = 100.0 * closed_book
        checks["closed_book"] = _check(cb <= t.closed_book_max + EPS, round(cb, 2), t.closed_book_max)

    done = [g for g in range(last + 1) if g in L]
    l_path = [L[g] for g in done]
    measurable = last >= t.generations and len(done) == last + 1
    if measurable:
        gain = L[last] - warm
        checks["l_gain"] = _check(gain >= t.l_gain - EPS, round(gain, 2), t.l_gain)
        checks["l_rising"] = _check(all(b > a + EPS for a, b in zip(l_path, l_path[1:], strict=False)),
                                    [round(v, 2) for v in l_path], "rising")
        S, XS = acc.get("S", {}).get(last), acc.get("XS", {}).get(last)
        if S is not None and XS is not None:
            checks["s_between"] = _check(min(XS, L[last]) - EPS <= S <= max(XS, L[last]) + EPS, round(S, 2),
                                         [round(XS, 2), round(L[last], 2)])
        if XS is not None:
            need = t.xs_of_warm * warm
            checks["xs_vs_warm"] = _check(XS >= need - EPS, round(XS, 2), round(need, 2))
    else:  # placeholders, so every run of a sweep has the same checks
        for name, models in (("l_gain", ()), ("l_rising", ()), ("s_between", ("S", "XS")), ("xs_vs_warm", ("XS",))):
            if all(m in acc for m in models):
                checks[name] = _check(None, None, None)

    failed = {n for n, c in checks.items() if c["met"] is False}
    met = False if failed else (None if any(c["met"] is None for c in checks.values()) else True)
    phrases = _phrases(checks, l_path, warm, t)
    progress = _progress(last, done, l_path, t)
    if met is True:
        line = "target met: " + ", ".join(p for _, p in phrases)
    elif met is False:
        line = "target not met: " + "; ".join(p for names, p in phrases if names & failed)
        line += "" if measurable else f" ({progress})"
    else:
        line = f"target not yet measurable: {progress}" + "".join(f"; {p}" for _, p in phrases)
    return {"met": met, "checks": checks, "line": line}


def _phrases(checks: dict[str, dict[str, Any]], l_path: list[float], warm: float,
             t: Targets) -> list[tuple[set[str], str]]:
    """(the checks a phrase reports, the phrase) for every measured check, in the order the line gives them."""
    c = checks
    out: list[tuple[set[str], str]] = []
    if not c["warm_band"]["met"]:
        out.append(({"warm_band"}, f"warm L {_pct(warm)} outside its band {t.band}"))
    if c.get("l_gain", {}).get("met") is not None:
        gain, rising = l_path[-1] - warm, c["l_rising"]["met"]
        if c["l_gain"]["met"] and rising:
            text = f"L {_arrow(l_path)} ({gain:+.1f})"
        elif gain <= EPS:
            text = f"L did not improve: {_arrow(l_path)}"
        elif not c["l_gain"]["met"]:
            text = f"L gained {gain:.1f} < {t.l_gain:g} points" + ("" if rising else " and did not rise at every "
                                                                  "generation") + f": {_arrow(l_path)}"
        else:
            text = f"L did not rise at every generation: {_arrow(l_path)}"
        out.append(({"l_gain", "l_rising"}, text))
    if c.get("xs_vs_warm", {}).get("met") is not None:
        xs, need = c["xs_vs_warm"]["value"], c["xs_vs_warm"]["need"]
        out.append(({"xs_vs_warm"}, f"XS {_pct(xs)} >= {_pct(need)}" if c["xs_vs_warm"]["met"]
                    else f"XS {_pct(xs)} < {_pct(need)} ({t.xs_of_warm:g} x warm L)"))
    if c.get("s_between", {}).get("met") is not None:
        s, (xs, lv) = c["s_between"]["value"], c["s_between"]["need"]
        out.append(({"s_between"}, f"S {_pct(s)} between" if c["s_between"]["met"]
                    else f"S {_pct(s)} not between XS {_pct(xs)} and L {_pct(lv)}"))
    if "closed_book" in c:
        cb = c["closed_book"]["value"]
        out.append(({"closed_book"}, f"closed book {_pct(cb)} <= {t.closed_book_max:g}" if c["closed_book"]["met"]
                    else f"closed-book warm L {_pct(cb)} > {t.closed_book_max:g}"))
    return out


def _progress(last: int, done: list[int], l_path: list[float], t: Targets) -> str:
    """How far the run got, for a line whose generation checks cannot be measured yet."""
    if last < t.generations:
        return f"the run has {last} generation{'s' if last != 1 else ''}, the targets need {t.generations}"
    return f"gen {max(done)} of {last} done, L {_arrow(l_path)}"


# ---------------------------------------------------------------- the toy world's own numbers


def world_evals(world_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The warm-start evaluations a built toy world recorded (world.json "evals"), or {} when unknown."""
    if not world_dir:
        return {}

    try:
        record = read_world(world_dir) or {}
    except (OSError, ValueError):  # unreadable or not JSON: the numbers are unknown, not an error
        return {}
    evals = record.get("evals")
    return evals if isinstance(evals, dict) else {}


def world_closed_book(world_dir: str | os.PathLike | None) -> float | None:
    """The world's closed-book warm-start L accuracy (a fraction), or None when it did not record one."""
    acc = (world_evals(world_dir).get("L-warm-closed-book") or {}).get("accuracy")
    return float(acc) if isinstance(acc, (int, float)) else None


def warm_start_warning(accuracy: float, dataset: str, where: str, targets: Targets = Targets()) -> str | None:
    """The start-of-run warning for a warm start outside its band (``accuracy`` a fraction), or None."""
    if targets.in_band(100.0 * accuracy):
        return None
    return (f"warning: warm start L {100 * accuracy:.1f}% on {dataset} is outside its band {targets.band} "
            f"({where}); the run's result will not say much")


def world_warning(world_dir: str | os.PathLike | None, targets: Targets = Targets()) -> str | None:
    """``warm_start_warning`` for the L-base score the world recorded, or None (in band, or no world)."""
    base = world_evals(world_dir).get("L-base") or {}
    acc = base.get("accuracy")
    if not isinstance(acc, (int, float)):
        return None
    return warm_start_warning(float(acc), f"toy-{base.get('split', 'test')}", f"world {world_dir}", targets)
