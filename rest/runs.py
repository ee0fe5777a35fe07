"""Opening a run: a new run dir with its resolved config, or a resumed one checked against it.

A new run refuses an existing run dir; ``--resume`` reuses it and its ``config.yaml``
(a ``--config`` given with it must resolve to the same config, or the resumed run
would silently mix two setups). A run dir that cannot be written (read-only, disk
full) is one ``ConfigError`` line before any work starts, and ``--resume`` first deletes
the temporary siblings an interrupted atomic write may have left (``remove_leftovers``).

Hub models are resolved once, here (``core.hub.pin_revisions``): a new run records the
commit of each in ``models.revisions``, a resumed run asks for the commits it recorded; a
model that cannot be had (offline and not cached) is one ``ModelUnavailable`` line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from core.config import Config, ConfigError, load_config
from core.hub import pin_revisions
from core.io import write_atomic
from core.run_dir import RunDir, remove_leftovers
from toyworld.world import world_paths


def resolve_config(cfg: Config) -> Config:
    """``cfg`` with every path a run needs filled in; reads the disk, builds nothing (``rest-react
    run`` builds a missing toy world first, as a step of its own).

    engine.model / search.corpus come from the world (``toyworld.world.world_paths``);
    models.policy defaults to engine.model (the warm start), and models.students to the
    world's ``S-base`` and ``XS-base`` when a world is configured.
    """
    cfg = world_paths(cfg)
    policy = cfg.models.policy or cfg.engine.model
    if not policy:
        raise ConfigError(f"{cfg.source}: models.policy: required (or engine.model, or world.dir)")
    students = dict(cfg.models.students)
    if not students and cfg.world.dir:
        students = {s: str(cfg.world.model_path(f"{s}-base")) for s in ("S", "XS")
                    if cfg.world.model_path(f"{s}-base").is_dir()}
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
