"""``rest-react report runs/NAME``: report.json, plots/ and one self-contained report.html from a run dir.

Everything is read back from the run dir (DESIGN section 4), so a report can be made
at any time, on any machine, from a finished, running or crashed run: ``config.yaml``
(the setup), ``state.json`` (finished phases, their timings and counters),
``evals/gen-<k>/<model>/<dataset>/score.json`` (every finished evaluation),
``trajectories/gen-<k>.jsonl`` (the ranked rollouts) and the training questions'
gold answers when the dataset is still where the config says.

report.json keeps the keys the driver always wrote (``run``, ``generations_done``,
``policy_version``, ``evals``, ``timings``, ``generations``) and adds the sections of
``evals.report_stats`` (Table 1, ranker, steps, training, phases), the paper's
numbers, ablation rows when other runs are given, and the ``verdict`` of
``evals.targets`` (did the run meet the toy default's targets; the closed-book warm
start comes from the toy world's world.json when the config names a world). The driver calls
``write_report`` as its ``report`` phase at the end of every generation.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from core.config import SECTIONS, Config
from core.engine import Sample
from core.io import read_jsonl, write_atomic
from core.run_dir import RunDir
from core.scoring import exact_match
from core.state import RunState, StateError
from evals import report_stats as rs
from evals.datasets import DatasetError, read_dataset
from evals.report_html import DASH, acc_ci, render
from evals.report_plots import make_plots
from evals.targets import verdict, world_closed_book

#: rollouts per generation the trajectory browser embeds (the page must stay light)
MAX_BROWSER_TRAJECTORIES = 300
#: characters of a sample's or snippet's text the browser keeps
TEXT_KEEP = 600


class ReportError(ValueError):
    """The run dir cannot be reported on; one line naming what is missing or broken."""


def run_config(path: Path) -> Config:
    """A run's resolved ``config.yaml`` as written by the driver, read without re-validating it.

    A report must work where the run's models and data are not (a copied run dir, another
    working directory), and for runs older than some config key: unknown keys are
    skipped, missing ones take their defaults.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: not a readable config ({type(e).__name__})") from None
    if not isinstance(raw, dict):
        raise ReportError(f"{path}: not a mapping of config sections")
    sections = {}
    for name, cls in SECTIONS.items():
        known = {f.name for f in dataclasses.fields(cls)}
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ReportError(f"{path}: {name}: not a mapping")
        sections[name] = cls(**{k: v for k, v in values.items() if k in known})
    return Config(**sections, source=str(path))


def open_run_dir(root: str | Path) -> tuple[RunDir, Config, RunState]:
    """The run dir at ``root`` with its config and state, or a one-line ReportError."""
    run = RunDir(Path(root))
    if not run.config.is_file():
        raise ReportError(f"{run.root}: not a run dir (no config.yaml)")
    try:
        return run, run_config(run.config), RunState.load(run.state)
    except StateError as e:
        raise ReportError(str(e)) from None


def llm_judge_fields(score: dict[str, Any]) -> dict[str, Any]:
    """With the LLM judge: its spread over runs and the exact match beside it (else nothing)."""
    j = score.get("llm_judge")
    if not j:
        return {}
    return {"exact_match": j["exact_match"], "judge_std": j["std"], "judge_runs": j["runs"],
            "judge_no_verdict": sum(j["no_verdict_per_run"])}


def base_report(run: RunDir, cfg: Config, state: RunState) -> dict[str, Any]:
    """The keys the driver has always written: every finished evaluation and every phase's timing."""
    evals = []
    gens = [g for g in range(cfg.rest.generations + 1) if state.is_done(g, "eval")]
    for g in gens:
        for model, path in run.models_at(cfg, g).items():
            for name in cfg.rest.eval_datasets:
                file = run.score_file(g, model, name)
                if file is None:
                    continue
                s = json.loads(file.read_text())
                evals.append({"gen": g, "model": model, "dataset": s["dataset"], "accuracy": s["accuracy"],
                              "n": s["n"], "ci95": s["ci95"], "f1": s["f1"], "contains": s["contains"],
                              "judge": s["judge"], "search": s["search"]["label"], "checkpoint": path,
                              "seconds": round(s["seconds"], 3), **llm_judge_fields(s)})
    done = max(gens, default=0)
    generations = {f"gen-{g}": {p: state.done.get(f"{g}/{p}", {}) for p in ("rollout", "rank", "store")}
                   for g in range(1, done + 1)}
    return {"run": run.name, "generations_done": done, "policy_version": state.version,
            "evals": evals, "timings": state.timings(), "generations": generations}


def rollouts(run: RunDir, state: RunState) -> dict[int, list[dict[str, Any]]]:
    """Generation -> its ranked rollouts, for every generation whose rank phase finished."""
    out = {}
    for path in sorted((run.root / "trajectories").glob("gen-*.jsonl")):
        gen = int(path.stem.split("-")[1])
        if state.is_done(gen, "rank"):
            out[gen] = read_jsonl(path, ReportError)
    return dict(sorted(out.items()))


def setup(cfg: Config) -> dict[str, Any]:
    """The settings a reader needs to interpret the numbers, one flat mapping."""
    return {"ranker": cfg.ranker.kind, "continue_with": cfg.rest.continue_with, "k_samples": cfg.agent.k_samples,
            "temperature": cfg.agent.temperature, "trajectories_per_question": cfg.rest.trajectories_per_question,
            "generations": cfg.rest.generations, "train_dataset": cfg.rest.train_dataset,
            "max_train_questions": cfg.rest.max_train_questions, "eval_datasets": cfg.rest.eval_datasets,
            "min_score": cfg.ranker.threshold,
            "prompt_style": cfg.agent.prompt_style, "self_checks": cfg.agent.self_checks,
            "policy": cfg.models.policy, "students": cfg.models.students, "world": cfg.world.dir}


#: the ``setup`` entries an ablation row shows: the settings the ablations vary
ABLATION_KNOBS = ("ranker", "min_score", "continue_with", "self_checks", "k_samples", "temperature",
                  "trajectories_per_question")


def ablation_row(root: str | Path) -> dict[str, Any]:
    """One run as a row of the ablation table: its setup and its last generation's numbers."""
    run, cfg, state = open_run_dir(root)
    base = base_report(run, cfg, state)
    last = base["generations_done"]
    main = base["evals"][0]["dataset"] if base["evals"] else ""  # the first eval dataset, by its display name
    acc = {e["model"]: e["accuracy"] for e in base["evals"] if e["gen"] == last and e["dataset"] == main}
    rank = state.done.get(f"{last}/rank", {})
    knobs = setup(cfg)
    return {"run": run.name, **{k: knobs[k] for k in ABLATION_KNOBS}, "gen": last, "dataset": main,
            "accuracy": acc, "ranker_agreement": rank.get("ranker_agreement"),
            "records": state.done.get(f"{last}/store", {}).get("batch_records")}


def gold_answers(cfg: Config) -> dict[str, list[str]]:
    """Question id -> gold answers of the training set, or {} when its file is not here any more."""
    try:
        data = read_dataset(cfg.rest.train_dataset, cfg.world.dir or None)
    except (DatasetError, OSError):
        return {}
    return {q.id: list(q.answers) for q in data.questions}


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= TEXT_KEEP else text[: TEXT_KEEP - 1] + "\u2026"


def browser_step(step: dict[str, Any]) -> dict[str, Any]:
    """One step as the trajectory browser shows it (prompts left out: they are long and repetitive)."""
    scores = step.get("scores") or [None] * len(step.get("samples", []))
    ok = step.get("parse_ok") or [False] * len(step.get("samples", []))
    samples = [{"text": _cut(x["text"]), "ppl": round(Sample(**x).perplexity, 3),
                "tokens": x["n_tokens"], "parsed": bool(p), "score": sc}
               for x, p, sc in zip(step.get("samples", []), ok, scores, strict=False)]
    return {"kind": step["kind"], "query": step.get("query"), "output": _cut(step.get("output")),
            "error": _cut(step.get("error")), "kept": step.get("chosen"), "ranker": step.get("ranker_best"),
            "samples": samples,
            "snippets": [{"link_id": s["link_id"], "title": s["title"], "text": _cut(s["text"])}
                         for s in step.get("snippets", [])]}


def browser_data(by_gen: dict[int, list[dict[str, Any]]], golds: dict[str, list[str]],
                 cap: int = MAX_BROWSER_TRAJECTORIES) -> dict[str, Any]:
    """The trajectory browser's records: the first ``cap`` rollouts of every generation."""
    items, totals = [], {}
    for gen, trajs in by_gen.items():
        totals[f"gen-{gen}"] = len(trajs)
        for t in trajs[:cap]:
            gold = golds.get(t["question_id"], [])
            items.append({"id": t["id"], "gen": gen, "question": t["question"], "golds": gold,
                          "answer": t["answer"], "correct": exact_match(t["answer"], gold) if gold else None,
                          "end_reason": t["end_reason"], "searches": t["searches_used"],
                          "steps": [browser_step(s) for s in t["steps"]]})
    return {"trajectories": items, "totals": totals, "cap": cap}


def collect(root: str | Path, compare: tuple[str | Path, ...] = (),
            max_trajectories: int = MAX_BROWSER_TRAJECTORIES) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report.json's content, the trajectory browser's data) for the run at ``root``."""
    run, cfg, state = open_run_dir(root)
    report = base_report(run, cfg, state)
    by_gen = rollouts(run, state)
    datasets = list(dict.fromkeys(e["dataset"] for e in report["evals"]))
    report.update({
        "setup": setup(cfg),
        "table1": [rs.table1(report["evals"], d) for d in datasets],
        "paper_table1": rs.PAPER_TABLE1,
        "ranker": {f"gen-{g}": rs.ranker_stats(t) for g, t in by_gen.items()},
        "steps": {f"gen-{g}": rs.step_stats(t, cfg.agent.search_budget) for g, t in by_gen.items()},
        "training": rs.training_stats(state.done),
        "phases": rs.phase_times(report["timings"]),
        "ablations": [ablation_row(r) for r in (root, *compare)] if compare else [],
    })
    report["verdict"] = verdict(report, world_closed_book(cfg.world.dir))
    browser = browser_data(by_gen, gold_answers(cfg) if by_gen else {}, max_trajectories)
    report["browser"] = {"shown": len(browser["trajectories"]), "totals": browser["totals"], "cap": browser["cap"]}
    return report, browser


def results_markdown(report: dict[str, Any]) -> str:
    """The README's results section: the target verdict, then this run's Table 1 (first eval dataset)
    beside the paper's numbers."""
    lines = [report["verdict"]["line"], ""] if report.get("verdict") else []
    for t in report["table1"][:1]:
        lines += [f"Accuracy % [95% CI] on {t['dataset']} (n={t['rows'][0]['cells'][t['columns'][-1]]['n']}, "
                  f"judge: {t['judge']}; search: {t['search']}), run `{report['run']}`:", "",
                  "| | " + " | ".join(t["columns"]) + " |", "| --- |" + " --- |" * len(t["columns"])]
        lines += [f"| {r['label']} | " + " | ".join(acc_ci(r["cells"].get(c)) for c in t["columns"]) + " |"
                  for r in t["rows"]]
    paper = report["paper_table1"]
    lines += ["", f"{paper['label']} ({paper['source']}):", "",
              "| | " + " | ".join(paper["columns"]) + " |", "| --- |" + " --- |" * len(paper["columns"])]
    lines += [f"| {r['label']} | " + " | ".join(DASH if r["cells"][c] is None else f"{r['cells'][c]:.1f}"
                                                 for c in paper["columns"]) + " |" for r in paper["rows"]]
    return "\n".join(lines) + "\n"


def write_report(root: str | Path, compare: tuple[str | Path, ...] = (),
                 max_trajectories: int = MAX_BROWSER_TRAJECTORIES) -> dict[str, Any]:
    """Write report.json, plots/*.png and report.html into the run dir at ``root``; return the report."""
    report, browser = collect(root, compare, max_trajectories)
    run = RunDir(Path(root))
    plots = make_plots(report)
    for name, png in plots.items():
        path = run.root / "plots" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(png)
        tmp.replace(path)
    report["plots"] = [f"plots/{name}.png" for name in plots]
    write_atomic(run.report, json.dumps(report, indent=1) + "\n")
    page = run.root / "report.html"
    write_atomic(page, render(report, browser, plots))
    page.chmod(0o644)  # a page to open or serve, not a private temp file
    return report
