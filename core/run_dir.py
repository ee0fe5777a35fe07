"""The run directory ``runs/<name>/`` (DESIGN section 4): where everything a run makes lives.

Layout::

    config.yaml                    the resolved config (every path filled in, the hub models'
                                   commits in models.revisions)
    state.json                     finished phases (core.state)
    batch/gen-<k>.jsonl            the growing batch (rest.batch)
    trajectories/gen-<k>.jsonl     every rollout of generation k, ranked in place by the rank phase
    checkpoints/<model>-gen<k>/    Hugging Face checkpoints (L, then the students)
    evals/gen-<k>/<model>/<dataset>/{predictions.jsonl,score.json}
    metrics.jsonl                  one line per finished phase (rest.metrics)
    report.json                    every evaluation so far + phase timings

Every file appears by a rename (``core.io.write_atomic``), so the only debris a crash can
leave are hidden temporary siblings, which ``remove_leftovers`` deletes on resume.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.config import Config


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
