"""report.html: one self-contained page (inline CSS and JS, plots as data URIs, data as escaped JSON).

Tables are rendered here, every value through ``html.escape``; the trajectory browser
is built in the page by ``report_assets.JS`` from the JSON island, which is escaped
so that no text in it (``</script>`` in a model's output, say) can end the script
element early. A table with no rows is replaced by a line saying there is no data
yet, so a page never shows an empty table.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from typing import Any

from evals.report_assets import CSS, JS
from evals.report_stats import gen_label

DASH = "\u2014"


def key_label(key: str) -> str:
    """``gen-<k>`` (a report.json key) as the page names it."""
    return gen_label(int(key.split("-")[1]))


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def json_island(data: Any) -> str:
    """``data`` as JSON that is safe inside ``<script type="application/json">`` (ASCII only, so even a
    lone surrogate from a corpus cannot break the file's encoding)."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


NUMERIC = re.compile(r"^(?:[-+]?\d[\d.,]*(?:%| \[.*\])?|\u2014)$")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An escaped HTML table, numeric columns right-aligned, the others left. No rows: a "no data" line."""
    if not rows:
        return '<p class="empty">No data yet.</p>'
    text = [not all(NUMERIC.match(str(r[i])) for r in rows) for i in range(len(headers))]

    def cells(values: Sequence[Any], tag: str) -> str:
        return "".join(f'<{tag}{" class=text" if text[i] else ""}>{esc(v)}</{tag}>' for i, v in enumerate(values))

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{cells(headers, "th")}</tr></thead><tbody>{body}</tbody></table>'


def pct(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{100 * x:.{digits}f}%"


def acc_ci(cell: dict[str, Any] | None, exact: bool = True) -> str:
    if not cell:
        return DASH
    lo, hi = cell["ci95"]
    if "judge_std" not in cell:
        return f"{100 * cell['accuracy']:.1f} [{100 * lo:.1f}\u2013{100 * hi:.1f}]"
    # the LLM judge's mean over its runs: its spread, and exact match beside it
    em = f" (EM {100 * cell['exact_match']:.1f})" if exact else ""
    return f"{100 * cell['accuracy']:.1f} \u00b1 {100 * cell['judge_std']:.1f} [{100 * lo:.1f}\u2013{100 * hi:.1f}]{em}"


def img(plots: dict[str, bytes], name: str, alt: str) -> str:
    if name not in plots:
        return ""
    data = base64.b64encode(plots[name]).decode("ascii")
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table1_section(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    paper = report["paper_table1"]
    paper_rows = [[r["label"], *(DASH if r["cells"][c] is None else f"{r['cells'][c]:.1f}" for c in paper["columns"])]
                  for r in paper["rows"]]
    paper_html = (f'<div><h3>{esc(paper["label"])}</h3>{table(["", *paper["columns"]], paper_rows, "paper")}'
                  f'<p class="note">{esc(paper["source"])}; a different dataset, judge and model scale.</p></div>')
    ours = []
    for t in report["table1"]:
        rows = [[r["label"], *(acc_ci(r["cells"].get(c)) for c in t["columns"])] for r in t["rows"]]
        n = sorted({c["n"] for r in t["rows"] for c in r["cells"].values()})
        ours.append(f'<div><h3>this run: {esc(t["dataset"])}</h3>{table(["", *t["columns"]], rows)}'
                    f'<p class="note">accuracy % [95% CI], n={esc(", ".join(map(str, n)))}; judge: {esc(t["judge"])}; '
                    f'search: {esc(t["search"])}</p></div>')
    if not ours:
        ours = ['<div><h3>this run</h3><p class="empty">No finished evaluation yet.</p></div>']
    return (f'<section id="table1"><h2>Table 1: accuracy by generation and model size</h2>'
            f'<div class="pair">{ours[0]}{paper_html}{"".join(ours[1:])}</div>'
            f'{img(plots, "accuracy", "accuracy per generation per model size")}</section>')


def evals_section(report: dict[str, Any]) -> str:
    rows = [[gen_label(e["gen"]), e["model"], e["dataset"], acc_ci(e, exact=False), pct(e.get("exact_match", e["accuracy"])),
             f"{e['f1']:.3f}", pct(e["contains"]), e["n"], e["judge"], e["search"], f"{e['seconds']:.1f}"]
            for e in report["evals"]]
    heads = ["generation", "model", "dataset", "accuracy [95% CI]", "exact match", "F1", "contains", "n", "judge",
             "search", "eval s"]
    return f'<section id="evals"><h2>Every evaluation</h2>{table(heads, rows)}</section>'


def ranker_section(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    heads = ["generation", "step kind", "LLM steps", "no parseable sample", "K samples identical",
             "ranker = kept (index)", "ranker = kept (text)", "ranker = lowest perplexity", "= kept where samples differ"]
    rows = []
    for gen, r in report["ranker"].items():
        for kind, a in [("all", r["overall"]), *r["by_kind"].items()]:
            rows.append([key_label(gen), kind, a["steps"], a["no_parseable"], pct(a["identical_samples"]), pct(a["agree_with_kept"]),
                         pct(a["agree_with_kept_text"]), pct(a["agree_with_lowest_perplexity"]),
                         pct(a["agree_with_kept_when_samples_differ"])])
    s = report["setup"]
    parts = [f'<section id="ranker"><h2>Ranker</h2><p class="note">ranker: {esc(s["ranker"])}; the rollout keeps '
             f'the {esc("lowest-perplexity parseable" if s["continue_with"] == "perplexity" else "ranker-chosen")} '
             f'sample; K={esc(s["k_samples"])}, T={esc(s["temperature"])}.</p>', table(heads, rows),
             verdicts_table(report), img(plots, "ranker_scores", "ranker score distributions")]
    if report["ablations"]:
        models = sorted({m for a in report["ablations"] for m in a["accuracy"]}, key=lambda m: (len(m), m))
        arows = [[a["run"], a["ranker"], "\u2014" if a["min_score"] is None else a["min_score"],
                  a["continue_with"], "on" if a["self_checks"] else "off", a["k_samples"], a["temperature"],
                  "/".join(map(str, a["trajectories_per_question"])), gen_label(a["gen"]),
                  *(pct(a["accuracy"].get(m)) for m in models), pct(a["ranker_agreement"]), a["records"]]
                 for a in report["ablations"]]
        heads = ["run", "ranker", "threshold", "continue with", "self-checks", "K", "T", "traj./question", "generation",
                 *(f"{m} ({report['ablations'][0]['dataset']})" for m in models), "ranker = kept", "batch records"]
        parts.append(f"<h3>Ablations</h3>{table(heads, arows)}")
    return "".join(parts) + "</section>"


def verdicts_table(report: dict[str, Any]) -> str:
    """Per generation: where the ranker left the pick to perplexity, and the llm-judge's unusable verdicts."""
    ranks = {g: v.get("rank", {}) for g, v in report.get("generations", {}).items()}
    rows = [[key_label(g), pct(r.get("tie_rate")), r.get("verdicts_needed", DASH), r.get("verdicts_unparsed", DASH),
             r.get("verdicts_engine_failed", DASH), pct(r.get("unparsed_rate"))]
            for g, r in ranks.items() if "tie_rate" in r]
    heads = ["generation", "ties where samples differ", "judge verdicts needed", "did not parse", "engine failed",
             "unusable verdicts"]
    return table(heads, rows) if rows else ""


def steps_section(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    rows = [[key_label(gen), s["episodes"], pct(s["answered"]), s["searches_per_episode"], s["llm_steps_per_episode"],
             pct(s["parse_failure_rate"]), ", ".join(f"{k} {v}" for k, v in s["end_reasons"].items())]
            for gen, s in report["steps"].items()]
    heads = ["generation", "episodes", "answered", "searches / episode", "LLM steps / episode", "parse failures",
             "end reasons"]
    kind_rows = [[key_label(gen), kind, k["steps"], k["samples"], k["parse_failures"], pct(k["parse_failure_rate"]),
                  k["tokens"], k["tokens_per_sample"]]
                 for gen, s in report["steps"].items() for kind, k in s["by_kind"].items()]
    kind_heads = ["generation", "step kind", "steps", "samples", "parse failures", "rate", "tokens", "tokens / sample"]
    return (f'<section id="steps"><h2>Steps of the rollouts</h2>{table(heads, rows)}'
            f'<h3>Per step kind</h3>{table(kind_heads, kind_rows)}'
            f'{img(plots, "steps", "step statistics")}</section>')


def training_section(report: dict[str, Any]) -> str:
    def num(x: Any) -> Any:
        return DASH if x is None else x

    rows = [[gen_label(r["gen"]), r["model"], num(r.get("examples")), num(r.get("steps")), num(r.get("loss_first")),
             num(r.get("loss_final")), num(r.get("tokens_per_s")), num(r.get("fit_seconds"))]
            for r in report["training"]]
    heads = ["generation", "model", "examples", "optimizer steps", "first loss", "final loss", "tokens/s", "fit s"]
    return f'<section id="training"><h2>Fine-tunes</h2>{table(heads, rows)}</section>'


def phases_section(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    p = report["phases"]
    rows = [[key_label(g), *(f"{p['seconds'][g][ph]:.1f}" if ph in p["seconds"][g] else DASH
                                                for ph in p["phases"]), f"{p['total'][g]:.1f}"]
            for g in p["generations"]]
    return (f'<section id="phases"><h2>Time per phase (seconds)</h2>{table(["", *p["phases"], "total"], rows)}'
            f'{img(plots, "phases", "time per phase")}</section>')


def browser_section(browser: dict[str, Any]) -> str:
    totals = ", ".join(f"{key_label(g)}: {n}" for g, n in browser["totals"].items())
    return ('<section id="browser"><h2>Trajectory browser</h2>'
            f'<p class="note">Ranked rollouts, the first {esc(browser["cap"])} of each generation '
            f'(rollouts per generation: {esc(totals or "none yet")}). Answers are checked against the gold answers '
            'by normalised exact match.</p><div class="browser"><div><div class="controls">'
            '<input id="q-search" type="search" placeholder="search questions, answers, ids">'
            '<select id="q-gen" aria-label="generation"></select></div><div id="q-count" class="note"></div>'
            '<ul id="q-list"></ul></div><div id="q-detail"></div></div></section>')


def verdict_section(report: dict[str, Any]) -> str:
    """The target verdict (``evals.targets``) as the page's first line, above every table."""
    v = report.get("verdict")
    if not v:
        return ""
    cls = {True: "met", False: "not-met"}.get(v["met"], "pending")
    return f'<p id="verdict" class="verdict {cls}">{esc(v["line"])}</p>'


def render(report: dict[str, Any], browser: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The whole page."""
    s = report["setup"]
    students = ", ".join(f"{k}: {v}" for k, v in s["students"].items())
    meta = (f"generations done: {report['generations_done']} of {s['generations']} \u00b7 policy version "
            f"{report['policy_version']} \u00b7 ranker {s['ranker']} \u00b7 K={s['k_samples']}, T={s['temperature']} "
            f"\u00b7 trajectories per question {s['trajectories_per_question']} \u00b7 train: {s['train_dataset']}")
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("table1", "Table 1"), ("evals", "Evaluations"), ("ranker", "Ranker"), ("steps", "Steps"),
        ("training", "Fine-tunes"), ("phases", "Time"), ("browser", "Trajectories")))
    body = "".join([
        table1_section(report, plots), evals_section(report), ranker_section(report, plots),
        steps_section(report, plots), training_section(report), phases_section(report, plots),
        browser_section(browser)])
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>ReST report: {esc(report['run'])}</title><style>{CSS}</style></head><body>"
            f"<header><h1>ReST meets ReAct \u00b7 run {esc(report['run'])}</h1><p class=\"meta\">{esc(meta)}</p>"
            f'<p class="meta">L: {esc(s["policy"])} \u00b7 students: {esc(students or "none")}</p><nav>{nav}</nav></header>'
            f'<main>{verdict_section(report)}{body}</main>'
            f'<script type="application/json" id="report-data">{json_island(browser)}</script>'
            f"<script>{JS}</script></body></html>\n")
    return page.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate in a table cell becomes "?"
