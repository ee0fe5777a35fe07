"""Models by Hugging Face hub id or local directory: one resolver for every part that loads one.

A model reference in a config (``engine.model``, ``models.policy``, ``models.students``,
``ranker.judge_model``, ``eval.judge_model``) is either a local directory or a hub id
(``org/name``). ``resolve_model`` turns either into a local directory: a directory is
taken as it is; a hub id goes through the Hugging Face cache (``HF_HUB_CACHE``, or
``HF_HOME``/hub) with ``huggingface_hub.snapshot_download``, which downloads only what
is missing and, offline (``HF_HUB_OFFLINE=1``), only reads the cache.

A run resolves its hub ids once, at its start (``pin_revisions``), and records the
commit each one resolved to in ``models.revisions`` of its config.yaml; everything the
run builds later asks for that commit, so a model pushed to the hub mid-run (or a cache
updated by another run) cannot change what this run loads, and a resumed run loads what
it started with. ``rest-react download --config X`` fills the cache beforehand: on a
cluster, point ``HF_HOME`` at storage every node mounts and run it once, so that no node
needs the network.

Offline with a model missing from the cache is one ``ModelUnavailable`` line naming the
model and that command (exit code 1 in the CLI), never a stack of hub errors.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import EngineError, typed_line

#: what a model needs from its repository: config, weights, tokenizer, chat template (no
#: pickled .bin weights, no GGUF or ONNX copies that some repositories also carry)
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
#: a hub id: ``name`` or ``org/name`` of letters, digits, ``-``, ``_`` and ``.``
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
DOWNLOAD_HINT = "rest-react download --config CONFIG"


class ModelUnavailable(EngineError):
    """A model reference that cannot be turned into a local directory, as one line."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference lives on this machine.

    ``revision`` is the commit of a hub model's snapshot, None for a local directory.
    """

    name: str
    path: Path
    revision: str | None = None

    @property
    def from_hub(self) -> bool:
        return self.revision is not None


def is_local(name: str) -> bool:
    """Whether ``name`` means a local directory: it exists, or can only be a path
    (absolute, ``./``, ``~``, a trailing ``/``, more than one ``/``, or not hub-id syntax)."""
    if Path(name).expanduser().exists():
        return True
    return name.startswith(("/", ".", "~")) or name.endswith("/") or not _HUB_ID.match(name)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the hub (read now, not when huggingface_hub was imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache() -> str:
    """The Hugging Face cache directory models are resolved through."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def resolve_model(name: str, revision: str | None = None, *, offline: bool | None = None,
                  hint: str = DOWNLOAD_HINT) -> ResolvedModel:
    """The local directory of model ``name`` (a directory or a hub id) at ``revision``.

    ``revision`` (a commit, branch or tag; None: ``main``) applies to hub ids only.
    ``offline`` (default: ``HF_HUB_OFFLINE``) reads the cache without asking the hub.
    ``hint`` is the command that would fetch the model, named in the offline error.
    Raises ``ModelUnavailable`` with one line.
    """
    if not isinstance(name, str) or not name:
        raise ModelUnavailable("model reference is empty: set a Hugging Face model directory or hub id")
    if is_local(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelUnavailable(f"model dir not found: {name}")
        return ResolvedModel(name, path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline() if offline is None else offline
    at = f" at revision {revision}" if revision else ""
    try:
        path = snapshot_download(name, revision=revision, cache_dir=hub_cache(), allow_patterns=MODEL_FILES,
                                 local_files_only=offline)
    except (LocalEntryNotFoundError, _incomplete_snapshot_error()) as e:
        missing = f"model {name}{at} is neither a local directory nor in the Hugging Face cache ({hub_cache()})"
        if offline:
            raise ModelUnavailable(f"{missing}, and the hub is off (HF_HUB_OFFLINE=1): fetch it first with `{hint}`") \
                from None
        raise ModelUnavailable(f"{missing}, and the hub could not be reached ({typed_line(e.__cause__ or e, 160)})") from None
    except RevisionNotFoundError:
        raise ModelUnavailable(f"model {name}: the hub has no revision {revision!r}") from None
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise ModelUnavailable(f"model {name}: not a local directory, and the hub refused it ({typed_line(e, 160)})") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelUnavailable(f"model {name}{at}: cannot fetch it from the hub: {typed_line(e, 160)}") from None
    return ResolvedModel(name, Path(path), Path(path).name)


def _incomplete_snapshot_error() -> type[Exception]:
    """huggingface_hub's error for a partly downloaded snapshot (newer versions only)."""
    from huggingface_hub import errors

    return getattr(errors, "IncompleteSnapshotError", LookupError)


# ---------------------------------------------------------------- the models of a config


def model_references(cfg) -> dict[str, str]:
    """Every model ``cfg`` (a ``core.config.Config``) will load: config key -> reference.

    The judges count only when they are used (``ranker.kind: llm-judge``, ``eval.judge:
    llm``); an ``engine.model`` with ``random_init`` is built locally, not fetched.
    """
    refs = {}
    if cfg.engine.model and not cfg.engine.random_init:
        refs["engine.model"] = cfg.engine.model
    if cfg.models.policy:
        refs["models.policy"] = cfg.models.policy
    for student, ref in cfg.models.students.items():
        refs[f"models.students.{student}"] = ref
    if cfg.ranker.kind == "llm-judge" and cfg.ranker.judge_model:
        refs["ranker.judge_model"] = cfg.ranker.judge_model
    if cfg.eval.judge == "llm" and cfg.eval.judge_model:
        refs["eval.judge_model"] = cfg.eval.judge_model
    return {key: ref for key, ref in refs.items() if ref}


def hub_ids(refs: Iterable[str]) -> list[str]:
    """The distinct hub ids among ``refs``, in first-seen order."""
    return list(dict.fromkeys(r for r in refs if not is_local(r)))


def pin_revisions(cfg, hint: str | None = None, offline: bool | None = None):
    """``cfg`` with ``models.revisions`` holding the commit of every hub model it names.

    Revisions already recorded (a resumed run's) are asked for as they are, so the
    run keeps loading what it started with; the others resolve to the hub's (or,
    offline, the cache's) ``main``. Every model is fetched into the cache if missing
    (online), or checked to be there (offline): a run that passes this cannot die
    later for a model it cannot find. Local directories are not recorded.
    """
    hint = hint or (f"rest-react download --config {cfg.source}" if cfg.source != "<defaults>" else DOWNLOAD_HINT)
    pinned = {}
    for ref in hub_ids(model_references(cfg).values()):
        pinned[ref] = resolve_model(ref, cfg.models.revisions.get(ref), offline=offline, hint=hint).revision
    if pinned == cfg.models.revisions:
        return cfg
    cfg = dataclasses.replace(cfg)
    cfg.models = dataclasses.replace(cfg.models, revisions=pinned)
    return cfg


def check_revision(value: str) -> bool:
    """Whether ``value`` is a full commit hash (what ``models.revisions`` records)."""
    return bool(_COMMIT.match(value))


def download(cfg, offline: bool | None = None, out=None) -> int:
    """``rest-react download``: fetch every hub model ``cfg`` names into the cache; 0 when all are there.

    One line per model: the reference, where it lives, its commit and the config keys that
    name it. Revisions recorded in ``models.revisions`` (a run's config.yaml) are fetched
    as recorded. Offline, nothing is fetched: the cache is checked, and each missing
    model is one error line. Local directories are checked to exist.
    """
    import sys

    out = out or sys.stdout
    offline = hub_offline() if offline is None else offline
    keys: dict[str, list[str]] = {}
    for key, ref in model_references(cfg).items():
        keys.setdefault(ref, []).append(key)
    if not keys:
        print(f"{cfg.source}: names no model (a toy world's models are built, not fetched)", file=out)
        return 0
    hint = f"HF_HUB_OFFLINE=0 rest-react download --config {cfg.source}"
    failed = 0
    for ref, named_by in keys.items():
        try:
            m = resolve_model(ref, cfg.models.revisions.get(ref), offline=offline, hint=hint)
        except ModelUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        where = f"commit {m.revision}" if m.from_hub else "local directory"
        print(f"{ref}: {m.path} ({where}; {', '.join(named_by)})", file=out, flush=True)
    print(f"{len(keys) - failed} of {len(keys)} models ready (hub cache: {hub_cache()}"
          f"{', offline: checked, not fetched' if offline else ''})", file=out)
    return 1 if failed else 0
