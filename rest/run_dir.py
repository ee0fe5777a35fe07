"""The run directory ``runs/<name>/`` (DESIGN section 4) and the resolved config it starts from.

Layout::

    config.yaml                    the resolved config (every path filled in, the hub models'
                                   commits in models.revisions)
    state.json                     finished phases (rest.state)
    batch/gen-<k>.jsonl            the growing batch (rest.batch)
    trajectories/gen-<k>.jsonl     every rollout of generation k, ranked in place by the rank phase
    checkpoints/<model>-gen<k>/    Hugging Face checkpoints (L, then the students)
    evals/gen-<k>/<model>/<dataset>/{predictions.jsonl,score.json}
    metrics.jsonl                  one line per finished phase (rest.metrics)
    report.json                    every evaluation so far + phase timings

A new run refuses an existing run dir; ``--resume`` reuses it and its ``config.yaml``
(a ``--config`` given with it must resolve to the same config, or the resumed run
would silently mix two setups). A run dir that cannot be written (read-only, disk
full) is one ``ConfigError`` line before any work starts, and ``--resume`` first deletes
the temporary siblings an interrupted atomic write may have left (``remove_leftovers``).

Hub models are resolved once, here (``rest.hub.pin_revisions``): a new run records the
commit of each in ``models.revisions``, a resumed run asks for the commits it recorded; a
model that cannot be had (offline and not cached) is one ``ModelUnavailable`` line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from rest.batch import write_atomic
from rest.config import Config, ConfigError, load_config
from rest.hub import pin_revisions


@dataclass(frozen=True)
class RunDir:
    """Paths of one run's files (nothing is created until a phase writes it)."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def batch(self) -> Path:
        return self.root / "batch"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def trajectories(self, gen: int) -> Path:
        return self.root / "trajectories" / f"gen-{gen}.jsonl"

    def checkpoint(self, model: str, gen: int) -> Path:
        return self.root / "checkpoints" / f"{model}-gen{gen}"

    def eval_dir(self, gen: int, model: str, dataset: str) -> Path:
        return self.root / "evals" / f"gen-{gen}" / model / dataset

    def score_file(self, gen: int, model: str, dataset: str) -> Path | None:
        """The ``score.json`` of ``dataset`` (a name, or a file named by its stem), or None when absent."""
        stem = Path(dataset).name.removesuffix(".gz").removesuffix(".jsonl")
        for name in (dataset, stem):
            if "/" not in name and (self.eval_dir(gen, model, name) / "score.json").is_file():
                return self.eval_dir(gen, model, name) / "score.json"
        return None

    def models_at(self, cfg: Config, gen: int) -> dict[str, str]:
        """Model name -> checkpoint of generation ``gen`` (0: the starting checkpoints of ``cfg``)."""
        names = {"L": cfg.models.policy, **cfg.models.students}
        return names if gen == 0 else {name: str(self.checkpoint(name, gen)) for name in names}


def resolve_config(cfg: Config) -> Config:
    """``cfg`` with every path a run needs filled in (building the toy world on first use).

    engine.model / search.corpus come from the world (``toyworld.world.with_world_paths``);
    models.policy defaults to engine.model (the warm start), and models.students to the
    world's ``S-base`` and ``XS-base`` when a world is configured.
    """
    from toyworld.world import with_world_paths

    cfg = with_world_paths(cfg)
    policy = cfg.models.policy or cfg.engine.model
    if not policy:
        raise ConfigError(f"{cfg.source}: models.policy: required (or engine.model, or world.dir)")
    students = dict(cfg.models.students)
    if not students and cfg.world.dir:
        models = Path(cfg.world.dir) / "models"
        students = {s: str(models / f"{s}-base") for s in ("S", "XS") if (models / f"{s}-base").is_dir()}
    cfg = dataclasses.replace(cfg)
    cfg.models = dataclasses.replace(cfg.models, policy=policy, students=students)
    cfg.engine = dataclasses.replace(cfg.engine, model=policy)
    return cfg


def config_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _first_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key}: {va!r} in the run, {vb!r} now"
    return None


def open_run(runs_root: str | Path, name: str, cfg: Config | None, resume: bool) -> tuple[RunDir, Config]:
    """The run dir and its resolved config; a new run writes ``config.yaml``.

    ``cfg`` is the (unresolved) config given on the command line, or None to resume
    from the run's own ``config.yaml``. Misuse is a ConfigError (exit code 2).
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--name: not a valid run name: {name!r}")
    run = RunDir(Path(runs_root) / name)
    if resume:
        if not run.config.is_file():
            raise ConfigError(f"--resume: {run.root} is not a run dir (no config.yaml)")
        _check_writable(run.root, "--resume")
        remove_leftovers(run.root)
        saved = load_config(run.config)
        if cfg is not None:
            given = resolve_config(cfg)
            if not given.models.revisions:  # the given file names models; the run recorded their commits
                given.models = dataclasses.replace(given.models, revisions=saved.models.revisions)
            diff = _first_difference(saved.to_dict(), given.to_dict())
            if diff:
                raise ConfigError(f"--resume: the config differs from {run.config}: {diff}")
        pin_revisions(saved)  # the recorded commits are still to be had (else: download --config config.yaml)
        return run, saved
    if cfg is None:
        raise ConfigError("--config: required unless --resume")
    if run.root.exists() and any(run.root.iterdir()):
        raise ConfigError(f"--name: {run.root} already exists (use --resume, or another --name)")
    resolved = pin_revisions(resolve_config(cfg))
    try:
        write_atomic(run.config, config_yaml(resolved))
    except OSError as e:
        raise ConfigError(f"--runs-dir: cannot write {run.config}: {e.strerror or e}") from None
    return run, load_config(run.config)


#: temporary siblings a crash can leave: ``.NAME.*.tmp`` files (``write_atomic``) and
#: ``.NAME.tmp-*`` / ``.NAME.old-*`` dirs (``learner.trainer.save_atomic``)
_LEFTOVER = re.compile(r"^\..+(\.tmp|\.tmp-[^/]+|\.old-[^/]+)$")


def remove_leftovers(root: Path) -> list[Path]:
    """Delete the temporary files and dirs an interrupted atomic write left under ``root``.

    Nothing else is touched: a phase's real outputs only ever appear by a rename, so
    these hidden siblings are never part of a finished output. Returns what was removed.
    """
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            if _LEFTOVER.match(name):
                path = Path(dirpath) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
        dirnames[:] = [d for d in dirnames if not _LEFTOVER.match(d)]
    return removed


def _check_writable(root: Path, flag: str) -> None:
    """Fail before any work when files cannot be written in ``root`` (read-only, full, no permission).

    A probe file is written atomically and removed: the same path every phase's output
    takes, so a run that passes this does not die on its first ``state.json`` update
    for a reason known at start.
    """
    probe = root / ".write-probe"
    try:
        write_atomic(probe, "probe\n")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{flag}: cannot write in {root}: {e.strerror or e}") from None
