"""One JSON Lines record, parsed strictly: every data file (corpus, questions, batch) uses it.

A bad line becomes one error line naming ``where`` (``FILE:LINE``), in the caller's
own exception type, so a user sees the same wording whichever file was wrong.
"""

from __future__ import annotations

import json
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
