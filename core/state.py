"""``state.json``: which phases of which generations are finished (the resume point).

A phase's output is written atomically first, then the phase is marked here (also
atomically), so after a crash every marked phase has its whole output on disk and an
unmarked one is simply run again, overwriting whatever partial output it left.
Generation 0 is the warm start: only its ``eval`` and ``report`` phases exist.

The policy ``version`` is the version the samplers must hold: 0 is the starting
checkpoint, and a generation's ``broadcast`` sets it to that generation's number.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.io import write_atomic

#: a generation's phases, in order (DESIGN section 2)
PHASES = ("rollout", "rank", "store", "finetune", "broadcast", "distil", "eval", "report")
#: the warm start's phases
WARM_PHASES = ("eval", "report")


class StateError(ValueError):
    """state.json is unreadable or inconsistent; one line."""


def phases_of(gen: int) -> tuple[str, ...]:
    return WARM_PHASES if gen == 0 else PHASES


@dataclass
class RunState:
    """The finished phases of a run, persisted at ``path`` on every change."""

    path: Path
    #: "gen/phase" -> what the phase recorded (seconds, counters)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 0

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunState:
        """The state at ``path``, or a fresh one if the file does not exist yet."""
        path = Path(path)
        if not path.is_file():
            return cls(path)
        try:
            raw = json.loads(path.read_text())
            state = cls(path, done=dict(raw["done"]), version=int(raw["version"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise StateError(f"{path}: not a valid state file ({type(e).__name__}: {e})") from None
        for key in state.done:
            gen, _, phase = key.partition("/")
            if not gen.isdigit() or phase not in phases_of(int(gen)):
                raise StateError(f"{path}: unknown phase {key!r}")
        return state

    def is_done(self, gen: int, phase: str) -> bool:
        return f"{gen}/{phase}" in self.done

    def mark(self, gen: int, phase: str, info: dict[str, Any] | None = None, version: int | None = None) -> None:
        """Record ``phase`` of ``gen`` as finished (in order), then persist the state atomically."""
        if phase not in phases_of(gen):
            raise StateError(f"generation {gen} has no phase {phase!r}")
        earlier = phases_of(gen)[: phases_of(gen).index(phase)]
        missing = [p for p in earlier if not self.is_done(gen, p)]
        if missing:
            raise StateError(f"cannot finish {gen}/{phase} before {gen}/{missing[0]}")
        if gen > 0 and not self.generation_done(gen - 1):
            raise StateError(f"cannot start generation {gen} before generation {gen - 1} is finished")
        before = (dict(self.done), self.version)
        self.done[f"{gen}/{phase}"] = {"finished_at": round(time.time(), 3), **(info or {})}
        if version is not None:
            self.version = version
        try:
            self.save()
        except BaseException:  # not on disk (disk full, read-only...): not finished in memory either
            self.done, self.version = before
            raise

    def generation_done(self, gen: int) -> bool:
        return all(self.is_done(gen, p) for p in phases_of(gen))

    def remaining_generations(self, total: int) -> list[int]:
        """Generations 0..``total`` not finished yet (0 = the warm start's evaluation)."""
        return [g for g in range(total + 1) if not self.generation_done(g)]

    def resume_point(self) -> str:
        """The first unfinished phase as ``gen/phase`` (for messages), or ``start``."""
        for gen in range(0, 10_000):
            for phase in phases_of(gen):
                if not self.is_done(gen, phase):
                    return f"{gen}/{phase}" if self.done else "start"
        return "end"

    def timings(self) -> dict[str, dict[str, float]]:
        """Seconds per phase per generation: ``{"gen-1": {"rollout": 12.3, ...}}``."""
        out: dict[str, dict[str, float]] = {}
        for key, info in self.done.items():
            gen, _, phase = key.partition("/")
            if "seconds" in info:
                out.setdefault(f"gen-{gen}", {})[phase] = info["seconds"]
        return out

    def save(self) -> None:
        body = {"version": self.version, "done": self.done}
        write_atomic(self.path, json.dumps(body, indent=1) + "\n")
