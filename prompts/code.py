"""The lexical layer of code-as-prompt: string literals, lists, and the completions.

Every piece of outside text (questions, queries, snippets, summaries, answers) enters a
prompt only through ``escape()`` inside a double-quoted literal. escape() collapses
newlines, tabs, control characters and every other line-breaking code point to single
spaces and escapes ``\\`` and ``"``, so text can neither end its literal nor start a
new line: a prompt's structure depends only on the counts of its items, never on
their content. The ``format_*`` helpers write completions in the exact grammar that
agent/parsers.py reads (the demonstrator's training targets, fakes in tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prompts.actions import SPACE_RUN, Answer, Keep, Revise, Search, Summary, Terminate

COMPLETION_PREFIX = " "
"""Prompts end with ``NAME =``; a completion starts with this space (tokenises like the exemplars)."""


@dataclass(frozen=True)
class Note:
    """One past search: its query and the summary kept (None = nothing relevant)."""

    query: str
    summary: str | None


def collapse(text: str) -> str:
    """Runs of whitespace/control characters become one space; ends are trimmed."""
    return SPACE_RUN.sub(" ", text).strip()


def escape(text: str) -> str:
    """Body of a double-quoted literal (no quotes added): collapse(), then escape \\ and "."""
    if not isinstance(text, str):
        raise TypeError(f"escape() takes str, got {type(text).__name__}")
    return collapse(text).replace("\\", "\\\\").replace('"', '\\"')


def unescape(body: str) -> str:
    """Inverse of escape() on a literal body; ValueError on a bad or dangling escape."""
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1 : i + 2]
            if nxt not in ('"', "\\"):
                raise ValueError(f"bad escape at offset {i} in literal body")
            out.append(nxt)
            i += 2
        elif c == '"':
            raise ValueError(f"unescaped quote at offset {i} in literal body")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def defang(text: str) -> str:
    """Source text (questions, queries, snippets) cannot carry a citation: 'link_id' -> 'link-id'."""
    return text.replace("link_id", "link-id")


def lit(text: str) -> str:
    """A literal for source text: defanged and escaped."""
    return '"' + escape(defang(text)) + '"'


def cited_lit(text: str | None) -> str:
    """A literal for text whose citations are real (a parsed summary or answer); None stays None."""
    return "None" if text is None else '"' + escape(text) + '"'


def list_lines(name: str, items: Sequence[str]) -> list[str]:
    """``NAME = []`` or one item per line between ``NAME = [`` and ``]``."""
    if not items:
        return [f"{name} = []"]
    return [f"{name} = [", *(f"    {item}," for item in items), "]"]


def format_decision(action: Search | Terminate) -> str:
    """The completion for a decision (with the leading space)."""
    if isinstance(action, Terminate):
        return COMPLETION_PREFIX + "Terminate()"
    return COMPLETION_PREFIX + 'Search("' + escape(action.query) + '")'


def format_summary(summary: Summary) -> str:
    return COMPLETION_PREFIX + cited_lit(summary.text)


def format_answer(answer: Answer | str) -> str:
    text = answer.text if isinstance(answer, Answer) else answer
    return COMPLETION_PREFIX + cited_lit(text)


def format_check(verdict: Keep | Revise) -> str:
    if isinstance(verdict, Keep):
        return COMPLETION_PREFIX + "Keep()"
    return COMPLETION_PREFIX + "Revise(" + cited_lit(verdict.answer.text) + ")"
