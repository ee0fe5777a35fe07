"""``rest-react sweep``: one config at several world seeds (and torch thread counts), one run after another.

A single run of the toy default says little: the warm start depends on the world seed,
and two machines (their kernels round differently; see ``--isa`` below) build different
worlds from the same seed (docs/world-build.md). A sweep runs the config at
every (seed, threads) point as its own ``rest-react run`` subprocess::

    rest-react run --config C --set world.seed=S --set world.dir=worlds/toy-S-tT
        --set world.threads=T --set learner.threads=T [--set ...] --name NAME-sS-tT --no-progress

and keeps its own folder ``RUNS/NAME/`` (run names may not contain "/", so the runs
are ``RUNS/NAME-sS-tT`` beside it): ``logs/sS-tT.log`` (each subprocess's stdout and
stderr), ``sweep.json`` and ``sweep.md``, rewritten after every run. A row per run:
warm / gen-k accuracy of XS, S and L on the first eval dataset, each target of
``evals.targets`` met or not, the run's wall seconds; then the mean ± sd over the
finished runs and, per target, how many runs met it.

``--isa avx2`` (or ``generic``) forces every run of the sweep onto AVX2 (or ATen's
non-SIMD) kernels (``ISA_ENV``): another rounding, as another CPU would give (1 and 2
threads give the toy models identical weights); its worlds are ``worlds/toy-S-tT-ISA``.
An ISA that is this CPU's own is refused: it would measure the native rounding twice.

Resumable: a run whose report.json shows every generation done is skipped, a run dir
that exists unfinished is continued with ``rest-react run --resume``. A failing run is
recorded with its exit code and last error line, and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from core.config import ConfigError, RestConfig, load_config
from core.io import write_atomic
from evals.targets import LABELS, Targets, accuracy_by_model, verdict, world_closed_book

#: the keys a sweep sets at each point; a ``--set`` of its own may not change them
SWEPT_KEYS = ("world.seed", "world.dir", "world.threads", "learner.threads")
MODELS = ("XS", "S", "L")
DASH = "\u2014"

Decision = Literal["new", "resume", "done"]

#: kernel sets a sweep can force on its runs (``--isa``): the way to build under another CPU's rounding.
#: 1 and 2 torch threads give the toy models bit-identical weights (docs/world-build.md); these do not.
#: generic is ATen's kernels without explicit SIMD: another rounding on any x86 CPU, AVX2 ones included.
ISA_ENV: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}


@dataclass(frozen=True, order=True)
class Point:
    """One run of a sweep: a world seed and the torch threads of its base training and learner ranks."""

    seed: int
    threads: int

    @property
    def key(self) -> str:
        return f"s{self.seed}-t{self.threads}"

    def world_dir(self, isa: str = "native") -> str:
        """The point's world: one per seed, threads and forced kernel set (they build different bases)."""
        return f"worlds/toy-{self.seed}-t{self.threads}" + ("" if isa == "native" else f"-{isa}")

    def overrides(self, isa: str = "native") -> list[str]:
        """The ``--set`` assignments that make a config run at this point."""
        return [f"world.seed={self.seed}", f"world.dir={self.world_dir(isa)}", f"world.threads={self.threads}",
                f"learner.threads={self.threads}"]


# ---------------------------------------------------------------- parsing


def parse_ints(text: str, flag: str, minimum: int = 0) -> list[int]:
    """``0-5``, ``0,3,7`` or ``1-2,9`` as a list of distinct ints in the given order; else a one-line ConfigError."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ConfigError(f"{flag}: expected numbers and ranges like 0-5, 0,3,7 or 1-2,9; got {text!r}")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise ConfigError(f"{flag}: the range {part.strip()} runs backwards")
        if lo < minimum:
            raise ConfigError(f"{flag}: must be >= {minimum}, got {lo}")
        out += [i for i in range(lo, hi + 1) if i not in out]
    return out


def check_overrides(overrides: list[str]) -> None:
    """A sweep's own ``--set`` may not set what the sweep varies."""
    for assignment in overrides:
        key = assignment.split("=", 1)[0].strip()
        if key in SWEPT_KEYS:
            raise ConfigError(f"--set {assignment}: the sweep sets {key} itself (see --seeds and --threads)")


def run_name(sweep: str, point: Point) -> str:
    return f"{sweep}-{point.key}"


# ---------------------------------------------------------------- a run's state


def read_report(run_root: Path) -> dict[str, Any] | None:
    """A run's report.json, or None when it has none (or it cannot be read: the run rewrites it)."""
    try:
        report = json.loads((run_root / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def planned_generations(run_root: Path, report: dict[str, Any] | None) -> int:
    """The generations the run is configured for: report.json's setup, else its config.yaml."""
    planned = ((report or {}).get("setup") or {}).get("generations")
    if isinstance(planned, int):
        return planned
    try:
        raw = yaml.safe_load((run_root / "config.yaml").read_text()) or {}
        return int((raw.get("rest") or {}).get("generations", RestConfig.generations))
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return RestConfig.generations


def decide(run_root: Path) -> Decision:
    """What the sweep does with a run dir: start it (absent or empty), ``resume`` it, or skip it (all done)."""
    if not run_root.is_dir() or not any(run_root.iterdir()):
        return "new"
    report = read_report(run_root)
    if report is not None and report.get("generations_done", -1) >= planned_generations(run_root, report):
        return "done"
    return "resume"


def run_command(config: str, point: Point, name: str, runs_dir: str, overrides: list[str],
                decision: Decision, isa: str = "native") -> list[str]:
    """The ``rest-react run`` command line for one point (``python -m rest``: the same CLI, this interpreter)."""
    tail = ["--name", name, "--runs-dir", runs_dir, "--no-progress"]
    base = [sys.executable, "-m", "rest", "run"]
    if decision == "resume":  # a resumed run keeps its own config.yaml
        return [*base, "--resume", *tail]
    sets = [x for a in [*point.overrides(isa), *overrides] for x in ("--set", a)]
    return [*base, "--config", config, *sets, *tail]


def last_error(log_text: str) -> str:
    """The line that says why a run failed: its last ``error:`` line, else its last non-empty line."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return ((errors or lines or [""])[-1])[:300]


# ---------------------------------------------------------------- the machine


def native_capability() -> str:
    """torch's CPU capability in this process: the kernels it dispatches to, which set the rounding."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError, RuntimeError):
        return "unknown"


def machine(isa: str = "native") -> dict[str, str]:
    """This CPU's model name and torch's CPU capability (the kernels it dispatches to: they set the rounding);
    with a forced ``isa`` the capability the runs get, marked as forced."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    capability = native_capability()
    if isa != "native":
        capability = f"{isa.upper()} (forced: {' '.join(f'{k}={v}' for k, v in ISA_ENV[isa].items())})"
    return {"cpu": cpu or platform.processor() or "unknown", "torch_cpu_capability": capability,
            "cores": str(os.cpu_count() or "?")}


# ---------------------------------------------------------------- the table


def accuracy_by_gen(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``gen-k`` -> model -> accuracy % on the first eval dataset (what the targets judge)."""
    out: dict[str, dict[str, float]] = {}
    for model, gens in accuracy_by_model(report)[1].items():
        for gen, acc in gens.items():
            out.setdefault(f"gen-{gen}", {})[model] = round(acc, 2)
    return out


def run_row(runs_dir: Path, sweep: str, point: Point, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the table: what the run dir says now, plus what the sweep saw of its subprocesses
    (``record``: exit code, last error line, wall seconds, machine)."""
    record = record or {}
    root = runs_dir / run_name(sweep, point)
    report = read_report(root) if root.is_dir() else None
    decision = decide(root)
    if decision == "done":
        status = "done"
    elif record.get("returncode"):
        status = "failed"
    elif root.is_dir():
        status = "unfinished"
    else:
        status = "not started"
    v = None
    if report is not None:
        world = (report.get("setup") or {}).get("world") or ""
        v = verdict(report, world_closed_book(world))
    return {"seed": point.seed, "threads": point.threads, "run": root.name, "status": status,
            "generations_done": (report or {}).get("generations_done"),
            "generations": planned_generations(root, report) if root.is_dir() else None,
            "accuracy": accuracy_by_gen(report) if report else {},
            "verdict": None if v is None else {"met": v["met"], "line": v["line"],
                                               "checks": {k: c["met"] for k, c in v["checks"].items()}},
            "returncode": record.get("returncode"), "error": record.get("error"),
            "seconds": record.get("seconds"), "machine": record.get("machine")}


def _columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(accuracy columns ``gen-k/MODEL``, target checks) the table shows."""
    gens = max([r["generations"] or 0 for r in rows] + [Targets().generations])
    acc = [f"gen-{g}/{m}" for g in range(gens + 1) for m in MODELS]
    seen = {c for r in rows if r["verdict"] for c in r["verdict"]["checks"]}
    return acc, [c for c in LABELS if c in seen]


def _acc(row: dict[str, Any], col: str) -> float | None:
    gen, model = col.split("/")
    return row["accuracy"].get(gen, {}).get(model)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd (over finished runs) of every accuracy column and of the wall seconds, and per target
    how many runs (of all rows: a failed run meets nothing) met it."""
    acc_cols, checks = _columns(rows)
    done = [r for r in rows if r["status"] == "done"]
    mean, sd = {}, {}
    for col in [*acc_cols, "seconds"]:
        values = [v for r in done if (v := (r["seconds"] if col == "seconds" else _acc(r, col))) is not None]
        if values:
            mean[col] = round(statistics.fmean(values), 2)
            sd[col] = round(statistics.stdev(values), 2) if len(values) > 1 else None
    counts = {}
    for c in [*checks, "all"]:
        states = [(r["verdict"] or {}).get("met") if c == "all" else ((r["verdict"] or {}).get("checks") or {}).get(c)
                  for r in rows]
        counts[c] = {"met": sum(s is True for s in states), "runs": len(rows),
                     "not_measurable": sum(s is None and r["status"] != "failed" for s, r in zip(states, rows,
                                                                                                strict=True))}
    return {"finished": len(done), "runs": len(rows), "mean": mean, "sd": sd, "counts": counts}


def _md(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _num(x: float | None, digits: int = 1) -> str:
    return DASH if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _yes(met: bool | None) -> str:
    return {True: "yes", False: "no"}.get(met, DASH)


def _gen_label(gen: str) -> str:
    k = int(gen.split("-")[1])
    return "warm" if k == 0 else f"gen {k}"


def status_text(row: dict[str, Any]) -> str:
    """A row's status as the table says it: a failure with its exit code and error line, how far a run got."""
    if row["status"] == "failed":
        return f"failed (exit {row['returncode']}): {row['error'] or ''}".strip()
    if row["status"] == "unfinished" and row["generations_done"] is not None:
        return f"unfinished (gen {row['generations_done']} of {row['generations']})"
    return row["status"]


def markdown(doc: dict[str, Any]) -> str:
    """sweep.md: the machine, the targets, a row per run, mean ± sd, and per target how many runs met it."""
    rows, s = doc["runs"], doc["summary"]
    acc_cols, checks = _columns(rows) if rows else ([], [])
    t = Targets()
    machines: list[dict[str, str]] = []  # where the runs ran (table-only may be written elsewhere)
    for m in [r["machine"] for r in rows if r["machine"]] or [doc["machine"]]:
        if m not in machines:
            machines.append(m)
    config = f"`{doc.get('config') or DASH}`" + (f" with `{' '.join(doc['overrides'])}`" if doc.get("overrides") else "")
    lines = [f"# Sweep {doc['name']}", ""]
    lines += [f"Machine: {m['cpu']}; torch CPU capability {m['torch_cpu_capability']}; {m['cores']} cores."
              for m in machines]
    lines += [f"Config: {config}; written {doc['written']}.",
              f"Targets (first eval dataset, accuracy %): warm L in {t.band}; last-generation L >= warm L + "
              f"{t.l_gain:g} points; L rising at each generation; S between XS and L; XS >= {t.xs_of_warm:g} x "
              f"warm L; closed-book warm L <= {t.closed_book_max:g}% where the world measured it.", ""]
    heads = ["seed", "threads", "status", *(f"{_gen_label(c.split('/')[0])} {c.split('/')[1]}" for c in acc_cols),
             *(LABELS[c] for c in checks), "all targets", "run s"]
    lines += ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    for r in rows:
        v = r["verdict"] or {}
        cells = [r["seed"], r["threads"], status_text(r), *(_num(_acc(r, c)) for c in acc_cols),
                 *(_yes((v.get("checks") or {}).get(c)) for c in checks), _yes(v.get("met")), _num(r["seconds"], 0)]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    if s["finished"]:
        def ms(col: str, digits: int = 1) -> str:
            if col not in s["mean"]:
                return DASH
            sd = s["sd"].get(col)
            return _num(s["mean"][col], digits) + ("" if sd is None else f" ± {_num(sd, digits)}")

        cells = [f"mean ± sd ({s['finished']} finished)", "", "", *(ms(c) for c in acc_cols),
                 *([""] * (len(checks) + 1)), ms("seconds", 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for c, n in s["counts"].items():
        pending = f" ({n['not_measurable']} not yet measurable)" if n["not_measurable"] else ""
        lines.append(f"- {'all targets' if c == 'all' else LABELS[c]}: {n['met']}/{n['runs']} runs{pending}")
    lines += ["", "Each run's verdict:", ""]
    lines += [f"- {r['run']}: " + (r["verdict"]["line"] if r["verdict"] and r["status"] != "failed"
                                   else status_text(r)) for r in rows]
    return "\n".join(lines) + "\n"


def write_table(folder: Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """Write ``folder``/sweep.json and sweep.md from the rows (``info``: name, config, overrides, machine)."""
    doc = {**info, "written": time.strftime("%Y-%m-%d %H:%M:%S"), "targets": dataclasses.asdict(Targets()),
           "runs": rows, "summary": summary(rows)}
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "sweep.json", json.dumps(doc, indent=1) + "\n")
    write_atomic(folder / "sweep.md", markdown(doc))
    return doc


# ---------------------------------------------------------------- the sweep


def read_sweep(folder: Path) -> dict[str, Any]:
    """The sweep.json a previous invocation wrote, or {}."""
    try:
        doc = json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def known_points(runs_dir: Path, name: str, previous: dict[str, Any]) -> list[Point]:
    """Every point a sweep has: those its sweep.json lists and the run dirs named like its runs."""
    points = {Point(r["seed"], r["threads"]) for r in previous.get("runs", [])}
    pattern = re.compile(rf"^{re.escape(name)}-s(\d+)-t(\d+)$")
    if runs_dir.is_dir():
        points |= {Point(int(m[1]), int(m[2])) for d in runs_dir.iterdir() if (m := pattern.match(d.name))}
    return sorted(points)


class Sweep:
    """One sweep's folder and its records; ``run`` goes through the points, ``table`` rewrites the table."""

    def __init__(self, runs_dir: str, name: str, config: str | None = None, overrides: list[str] | None = None,
                 isa: str | None = None):
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"--name: not a valid sweep name: {name!r}")
        self.runs_dir, self.name = Path(runs_dir), name
        self.folder = self.runs_dir / name
        previous = read_sweep(self.folder)
        self.records: dict[Point, dict[str, Any]] = {
            Point(r["seed"], r["threads"]): {k: r.get(k) for k in ("returncode", "error", "seconds", "machine")}
            for r in previous.get("runs", [])}
        self.points = known_points(self.runs_dir, name, previous)
        self.config = config or previous.get("config")
        self.overrides = overrides if overrides is not None else previous.get("overrides", [])
        self.isa = isa or previous.get("isa") or "native"
        if self.isa not in ISA_ENV:
            raise ConfigError(f"--isa: one of {', '.join(ISA_ENV)}, got {self.isa!r}")
        if previous.get("isa", self.isa) != self.isa:
            raise ConfigError(f"--isa: sweep {name} ran with --isa {previous['isa']}; name another sweep for {self.isa}")
        self.machine = machine(self.isa)

    def table(self) -> dict[str, Any]:
        rows = [run_row(self.runs_dir, self.name, p, self.records.get(p)) for p in self.points]
        return write_table(self.folder, rows, {"name": self.name, "config": self.config, "isa": self.isa,
                                               "overrides": self.overrides, "machine": self.machine})

    def run(self, points: list[Point], say=print) -> dict[str, Any]:
        """Run (or resume, or skip) every point in order; the table is rewritten after each."""
        self.points = sorted(set(self.points) | set(points))
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        doc = self.table()
        for i, p in enumerate(points, 1):
            name = run_name(self.name, p)
            decision = decide(self.runs_dir / name)
            where = f"sweep {self.name} [{i}/{len(points)}] seed {p.seed}, threads {p.threads}"
            if decision == "done":
                say(f"{where}: {name} is finished, skipped")
                continue
            log = self.folder / "logs" / f"{p.key}.log"
            say(f"{where}: {'resuming' if decision == 'resume' else 'starting'} {name} (log {log})")
            cmd = run_command(self.config, p, name, str(self.runs_dir), self.overrides, decision, self.isa)
            rc, error, seconds = self._launch(cmd, log, ISA_ENV[self.isa])
            rec = self.records.setdefault(p, {})
            rec.update(returncode=rc, error=error if rc else None, machine=self.machine,
                       seconds=round((rec.get("seconds") or 0.0) + seconds, 1))
            doc = self.table()
            row = next(r for r in doc["runs"] if (r["seed"], r["threads"]) == (p.seed, p.threads))
            outcome = f"failed (exit {rc}): {error}" if rc else (row["verdict"] or {}).get("line", row["status"])
            say(f"{where}: {seconds:.0f} s, {outcome}")
        return doc

    def _launch(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[int, str, float]:
        """Run ``cmd`` (``env`` added to this process's) with its output appended to ``log``: (exit code, its
        last error line, wall seconds)."""
        with log.open("a", encoding="utf-8") as f:
            f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
            f.flush()
            start = f.tell()
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
                                env={**os.environ, **(env or {})}).returncode
            seconds = time.perf_counter() - t0
        with log.open("r", encoding="utf-8", errors="replace") as f:
            f.seek(start)
            error = last_error(f.read())
        return rc, error, seconds


def validate(config: str, points: list[Point], overrides: list[str], isa: str = "native") -> None:
    """Load the config at every point before anything runs: a bad key is exit 2 at once, not after hours."""
    check_overrides(overrides)
    if isa not in ISA_ENV:
        raise ConfigError(f"--isa: one of {', '.join(ISA_ENV)}, got {isa!r}")
    native = native_capability()
    if isa != "native" and ISA_ENV[isa]["ATEN_CPU_CAPABILITY"].upper() == native.upper():
        others = ", ".join(i for i, env in ISA_ENV.items() if i != "native" and
                           env["ATEN_CPU_CAPABILITY"].upper() != native.upper())
        raise ConfigError(f"--isa {isa}: this CPU's own kernels ({native}), the native rounding again; "
                          f"another rounding here: --isa {others}")
    for p in points:
        load_config(config, [*p.overrides(isa), *overrides])
