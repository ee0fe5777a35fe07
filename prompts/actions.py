"""The step actions of the agent's output grammar, and the characters its literals exclude.

prompts/code.py writes completions in this grammar (the demonstrator's targets, test
fakes); agent/parsers.py reads model output into these actions. A citation is
``[link_id=N]`` inside a summary or an answer, N a decimal without leading zeros.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


def _space_like(c: str) -> bool:
    return (c.isspace() and c != " ") or unicodedata.category(c) == "Cc"


# No code point above U+3000 is whitespace or a control character (a test checks the full range).
SPACE_LIKE_CHARS = "".join(c for c in map(chr, range(0x3001)) if _space_like(c))
"""Characters that never appear inside a literal: escape() turns each into a space."""

SPACE_LIKE_CLASS = "[" + "".join(f"\\u{ord(c):04x}" for c in SPACE_LIKE_CHARS) + "]"
CITATION = re.compile(r"\[link_id=(0|[1-9][0-9]{0,8})\]")
_SPACED_CITATION = re.compile(r" ?\[link_id=(?:0|[1-9][0-9]{0,8})\]")
SPACE_RUN = re.compile("[ " + SPACE_LIKE_CLASS[1:-1] + "]+")
"""A run of spaces and space-like characters (what collapsing turns into one space)."""


@dataclass(frozen=True)
class Search:
    query: str


@dataclass(frozen=True)
class Terminate:
    pass


@dataclass(frozen=True)
class Summary:
    """Facts with citations, in order of first appearance; ``text`` None = nothing relevant."""

    text: str | None
    citations: tuple[int, ...]


@dataclass(frozen=True)
class Answer:
    """An answer as written (citations included) and the link ids it cites."""

    text: str
    citations: tuple[int, ...]

    @property
    def plain(self) -> str:
        """The answer without its citations, whitespace normalised (what evals compare)."""
        return strip_citations(self.text)


@dataclass(frozen=True)
class Keep:
    pass


@dataclass(frozen=True)
class Revise:
    answer: Answer


def strip_citations(text: str) -> str:
    """Drop every well-formed ``[link_id=N]`` (and the space before it); collapse whitespace."""
    # Collapsing first leaves at most one space before a citation, so both passes stay linear.
    return SPACE_RUN.sub(" ", _SPACED_CITATION.sub("", SPACE_RUN.sub(" ", text))).strip()
