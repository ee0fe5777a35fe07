"""Files every part reads and writes: strict JSON Lines records and all-or-nothing writes.

A bad line becomes one error line naming ``where`` (``FILE:LINE``), in the caller's own
exception type, so a user sees the same wording whichever file was wrong. A file is
written through a temporary sibling and a rename, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def parse_object(line: str, where: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """``line`` as a JSON object, or ``error("WHERE: what is wrong")``."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise error(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def read_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError) -> list[dict[str, Any]]:
    """Every line of a JSONL file as a dict; a bad line is ``error("FILE:LINE: ...")``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            rows.append(parse_object(line, f"{path}:{lineno}", error))
    return rows


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as JSON Lines atomically; returns how many."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    write_atomic(path, "".join(lines))
    return len(lines)
