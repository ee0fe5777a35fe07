"""The run report's figures, drawn from report.json's content alone, as PNG bytes.

matplotlib's object API with the Agg canvas (no pyplot, no display, no global backend
switch), so the driver can draw them inside a run. A figure whose data is absent
(no rollouts yet, no finished eval) is left out rather than drawn empty.
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evals.report_stats import gen_label

COLORS = {"XS": "#8c6bb1", "S": "#2b8cbe", "L": "#e6550d"}
CYCLE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
DPI = 110


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _label(key: str) -> str:
    """``gen-<k>`` (a report.json key) as the page names it."""
    return gen_label(int(key.split("-")[1]))


def _color(i: int, name: str) -> str:
    return COLORS.get(name, CYCLE[i % len(CYCLE)])


def accuracy_plot(report: dict[str, Any]) -> bytes | None:
    """Accuracy per generation per model size, with 95% CIs; one panel per eval dataset (at most 3)."""
    tables = report.get("table1", [])[:3]
    if not any(t["rows"] for t in tables):
        return None
    fig = Figure(figsize=(3.6 * len(tables) + 1.2, 3.4))
    for k, table in enumerate(tables):
        ax = fig.add_subplot(1, len(tables), k + 1)
        gens = [r["gen"] for r in table["rows"]]
        dodge = 0.06 * (len(table["columns"]) - 1) / 2
        for i, model in enumerate(table["columns"]):
            pts = [(r["gen"], r["cells"][model]) for r in table["rows"] if model in r["cells"]]
            xs = [g - dodge + 0.06 * i for g, _ in pts]  # side by side, so equal scores stay visible
            ys = [100 * c["accuracy"] for _, c in pts]
            err = [[100 * (c["accuracy"] - c["ci95"][0]) for _, c in pts],
                   [100 * (c["ci95"][1] - c["accuracy"]) for _, c in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=model, color=_color(i, model))
        ax.set_xticks(gens, [gen_label(g) for g in gens])
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{table['dataset']}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="model", title_fontsize=8)
    return _png(fig)


def ranker_plot(report: dict[str, Any]) -> bytes | None:
    """The ranker's scores of parseable samples, and of its picks, per generation."""
    gens = [(g, r) for g, r in report.get("ranker", {}).items() if r["scores"]["counts"]]
    if not gens:
        return None
    fig = Figure(figsize=(7.2, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    for i, (gen, r) in enumerate(gens):
        color = CYCLE[i % len(CYCLE)]
        ax.stairs(r["scores"]["counts"], r["scores"]["edges"], color=color, lw=1.8, label=f"{_label(gen)}: all parseable")
        if r["best_scores"]["counts"]:
            ax.stairs(r["best_scores"]["counts"], r["best_scores"]["edges"], color=color, lw=1.2, ls="--",
                      label=f"{_label(gen)}: ranker's pick")
    ax.set_xlabel("ranker score")
    ax.set_ylabel("samples")
    ax.set_title("Ranker score distribution", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def steps_plot(report: dict[str, Any]) -> bytes | None:
    """Searches per episode, tokens per sample and parse failures per step kind, per generation."""
    steps = report.get("steps", {})
    if not any(s["episodes"] for s in steps.values()):
        return None
    fig = Figure(figsize=(10.5, 3.2))
    ax_s, ax_t, ax_p = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    kinds = list(dict.fromkeys(k for s in steps.values() for k in s["by_kind"]))
    width = 0.8 / max(len(steps), 1)
    for i, (gen, s) in enumerate(steps.items()):
        color, shift = CYCLE[i % len(CYCLE)], (i - (len(steps) - 1) / 2) * width
        h = s["searches_histogram"]
        if h["counts"]:
            centers = [(a + b) / 2 for a, b in zip(h["edges"], h["edges"][1:], strict=False)]
            ax_s.bar([c + shift for c in centers], h["counts"], width=width, color=color, label=_label(gen))
        xs = [k + shift for k in range(len(kinds))]
        ax_t.bar(xs, [s["by_kind"].get(k, {}).get("tokens_per_sample", 0) for k in kinds], width=width,
                 color=color, label=_label(gen))
        ax_p.bar(xs, [100 * s["by_kind"].get(k, {}).get("parse_failure_rate", 0) for k in kinds], width=width,
                 color=color, label=_label(gen))
    ax_s.set(xlabel="searches in the episode", ylabel="episodes", title="Searches per episode")
    for ax, title, ylabel in ((ax_t, "Tokens per sample", "tokens"), (ax_p, "Parse failures", "% of samples")):
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, fontsize=8)
        ax.set(title=title, ylabel=ylabel)
    for ax in (ax_s, ax_t, ax_p):
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    return _png(fig)


def phases_plot(report: dict[str, Any]) -> bytes | None:
    """Wall time of every phase, one stacked bar per generation."""
    p = report.get("phases", {})
    if not p.get("generations"):
        return None
    gens, phases = p["generations"], p["phases"]
    fig = Figure(figsize=(8.4, 1.2 + 0.45 * len(gens)))
    ax = fig.add_subplot(1, 1, 1)
    left = [0.0] * len(gens)
    for i, phase in enumerate(phases):
        widths = [p["seconds"][g].get(phase, 0.0) for g in gens]
        ax.barh(range(len(gens)), widths, left=left, color=CYCLE[i % len(CYCLE)], label=phase)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(gens)), [_label(g) for g in gens])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Time per phase", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def make_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """Name -> PNG bytes of every figure that has data."""
    drawn = {"accuracy": accuracy_plot(report), "ranker_scores": ranker_plot(report),
             "steps": steps_plot(report), "phases": phases_plot(report)}
    return {name: png for name, png in drawn.items() if png is not None}

