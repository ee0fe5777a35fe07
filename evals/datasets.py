"""Question sets for evaluation: named ones (toy world splits, Bamboogle, HotpotQA) or any JSONL file.

Every set is JSON Lines of ``{"id", "question", "answers": [str, ...]}``, extra keys
allowed (the toy world's gold fields, HotpotQA's type...). Loading is strict, because
a silently skipped or mangled line changes the score: a bad line is a one-line
``DatasetError`` naming the file, the line number and what is wrong. Blank lines are
skipped; a file with no questions is an error.

Names: ``toy-train`` / ``toy-dev`` / ``toy-test`` are ``<world_dir>/questions/<split>.jsonl``;
``bamboogle`` (125 questions) and ``hotpotqa-dev`` (500) are the files shipped in the
repository's ``data/`` (see data/PROVENANCE.md); anything else is a path.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.trajectory import Question
from core.config import KNOWN_DATASETS, SHIPPED_DATASETS, TOY_SPLITS
from core.io import parse_object

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {name: REPO / "data" / file for name, file in SHIPPED_DATASETS.items()}
#: keys every record has; the others are the record's extra (gold) fields
CORE_KEYS = ("id", "question", "answers")


class DatasetError(ValueError):
    """A question set could not be loaded; the message is one line naming file and line."""


@dataclass
class Dataset:
    """A loaded question set: its name, its file, the questions and each record's extra fields."""

    name: str
    path: Path
    questions: list[Question]
    #: question id -> the record's keys other than id/question/answers (may be empty)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)


def resolve(name_or_path: str, world_dir: str | os.PathLike | None = None) -> tuple[str, Path]:
    """The dataset's display name and file for a known name or a path."""
    if name_or_path in TOY_SPLITS:
        if not world_dir:
            raise DatasetError(f"{name_or_path}: needs a toy world directory (--world DIR or world.dir)")
        path = Path(world_dir) / "questions" / f"{TOY_SPLITS[name_or_path]}.jsonl"
        if not path.is_file():
            raise DatasetError(f"{name_or_path}: no file {path} (is {world_dir} a built toy world?)")
        return name_or_path, path
    if name_or_path in SHIPPED:
        path = SHIPPED[name_or_path]
        if not path.is_file():
            raise DatasetError(f"{name_or_path}: shipped file {path} is missing from this checkout")
        return name_or_path, path
    path = Path(name_or_path)
    if not path.is_file():
        raise DatasetError(f"{name_or_path}: not a known dataset ({', '.join(KNOWN_DATASETS)}) nor a file")
    name = path.name.removesuffix(".gz").removesuffix(".jsonl")
    return name, path


def read_dataset(name_or_path: str, world_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a question set with its records' extra fields (see the module doc)."""
    name, path = resolve(name_or_path, world_dir)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: not a valid gzip file ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start})") from None
    questions: list[Question] = []
    extras: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = _parse_record(line, f"{path}:{lineno}")
        qid = record["id"]
        if qid in first_line:
            raise DatasetError(f"{path}:{lineno}: duplicate id {qid!r} (first on line {first_line[qid]})")
        first_line[qid] = lineno
        questions.append(Question(id=qid, question=record["question"], answers=tuple(record["answers"])))
        extras[qid] = {k: v for k, v in record.items() if k not in CORE_KEYS}
    if not questions:
        raise DatasetError(f"{path}: no questions (the file is empty)")
    return Dataset(name=name, path=path, questions=questions, extras=extras)


def load_dataset(name_or_path: str, world_dir: str | os.PathLike | None = None) -> list[Question]:
    """The questions of a named set or JSONL file (``read_dataset`` keeps the extra fields too)."""
    return read_dataset(name_or_path, world_dir).questions


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters so an error stays one short line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_record(line: str, where: str) -> dict[str, Any]:
    record = parse_object(line, where, DatasetError)
    for key in ("id", "question"):
        if key not in record:
            raise DatasetError(f"{where}: missing key {key!r} (need id, question, answers)")
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{where}: {key!r} must be a non-empty string, got {_short(value)}")
    if "answers" not in record:
        raise DatasetError(f"{where}: missing key 'answers' (need id, question, answers)")
    answers = record["answers"]
    if not isinstance(answers, list) or not answers:
        raise DatasetError(f"{where}: 'answers' must be a non-empty list of strings, got {_short(answers)}")
    for a in answers:
        if not isinstance(a, str) or not a.strip():
            raise DatasetError(f"{where}: 'answers' must hold non-empty strings, got {_short(a)}")
    return record


#: a built toy world's record: its recipe, skill measurements and warm-start evals
WORLD_JSON = "world.json"


def read_world(world_dir: str | os.PathLike) -> dict | None:
    """The ``world.json`` record of a built world, or None when there is none."""
    path = Path(world_dir) / WORLD_JSON
    if not path.is_file():
        return None
    return json.loads(path.read_text())
