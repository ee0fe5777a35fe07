"""Strict parsers for the agent's one-line completions (the output grammar of prompts/).

Model output is untrusted text, so it is read by a small hand-written scanner, never
by eval/exec. The grammar (leading spaces/tabs and trailing whitespace are ignored;
anything else outside it is a ParseError naming what was wrong)::

    decision  := 'Search(' STRING ')' | 'Terminate()'
    summary   := STRING | 'None'                    (None = nothing relevant)
    answer    := STRING
    check     := 'Keep()' | 'Revise(' STRING ')'    (the string follows the answer rules)
    STRING    := '"' (CHAR | '\\\\' | '\\"')* '"'
    CHAR      := any character but '"', '\\', control characters and whitespace other
                 than ' ' (exactly what prompts.escape() can produce)
    CITATION  := '[link_id=' N ']' inside summary/answer strings, N a decimal without
                 leading zeros; every other mention of 'link_id' is a malformed citation.

The ranker's three-line verdict and the Check_Answer judge's True/False are parsed
here too, so that every piece of untrusted model text has one reader.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import NoReturn

from prompts.actions import (
    CITATION,
    SPACE_LIKE_CLASS,
    Answer,
    Keep,
    Revise,
    Search,
    Summary,
    Terminate,
    strip_citations,
)

MAX_QUERY_CHARS = 256
"""Longest search query accepted (characters, after unescaping)."""


class ParseError(ValueError):
    """A completion outside the grammar; the message says what was wrong, on one line."""


_LITERAL_STOP = re.compile(r'["\\]|' + SPACE_LIKE_CLASS)


def _shown(text: str, limit: int = 40) -> str:
    """A short, one-line rendering of model text for error messages."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


class _Scanner:
    """Reads one completion left to right; every failure is a one-line ParseError."""

    def __init__(self, what: str, text: object) -> None:
        if not isinstance(text, str):
            raise ParseError(f"{what}: expected str, got {type(text).__name__}")
        self.what = what
        self.text = text.lstrip(" \t").rstrip()
        self.pos = 0

    def fail(self, message: str) -> NoReturn:
        raise ParseError(f"{self.what}: {message}")

    def rest(self) -> str:
        return self.text[self.pos :]

    def take(self, token: str) -> bool:
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: str) -> None:
        if not self.take(token):
            got = _shown(self.rest()) if self.rest() else "end of text"
            self.fail(f"expected {token!r} at column {self.pos}, got {got}")

    def end(self) -> None:
        if self.pos != len(self.text):
            self.fail(f"unexpected text after column {self.pos}: {_shown(self.rest())}")

    def string(self) -> str:
        """A double-quoted literal; only \\\\ and \\" are escapes."""
        start = self.pos
        self.expect('"')
        parts: list[str] = []
        while True:
            m = _LITERAL_STOP.search(self.text, self.pos)
            if m is None:
                self.fail(f"unterminated string starting at column {start}")
            parts.append(self.text[self.pos : m.start()])
            c = m.group()
            if c == '"':
                self.pos = m.end()
                return "".join(parts)
            if c != "\\":
                self.fail(f"character U+{ord(c):04X} inside a string at column {m.start()}")
            nxt = self.text[m.end() : m.end() + 1]
            if nxt == "":
                self.fail(f"unterminated string starting at column {start}")
            if nxt not in ('"', "\\"):
                bad = "\\" + nxt
                self.fail(f'bad escape {bad!r} at column {m.start()} (only \\\\ and \\" are allowed)')
            parts.append(nxt)
            self.pos = m.end() + 1


def _citations(what: str, text: str, allowed: Collection[int]) -> tuple[int, ...]:
    """Link ids cited in ``text`` (first-appearance order, no repeats), all in ``allowed``."""
    found: list[int] = []
    start = 0
    while (i := text.find("link_id", start)) != -1:
        m = CITATION.match(text, i - 1) if i > 0 else None
        if m is None:
            raise ParseError(f"{what}: malformed citation near {_shown(text[max(i - 1, 0) :], 20)}")
        n = int(m.group(1))
        if n not in allowed:
            raise ParseError(f"{what}: citation [link_id={n}] is not among the shown link ids")
        if n not in found:
            found.append(n)
        start = m.end()
    return tuple(found)


def _answer(what: str, body: str, valid: Collection[int]) -> Answer:
    citations = _citations(what, body, valid)
    if not strip_citations(body):
        raise ParseError(f"{what}: empty answer")
    if valid and not citations:
        raise ParseError(f"{what}: answer has no [link_id=N] citation")
    return Answer(body, citations)


def parse_decision(text: str) -> Search | Terminate:
    """``Search("<query>")`` or ``Terminate()``; the query is non-blank and <= 256 characters."""
    s = _Scanner("decision", text)
    if s.take("Terminate()"):
        s.end()
        return Terminate()
    if not s.take("Search("):
        s.fail(
            f'expected Search("<query>") or Terminate(), got {_shown(s.rest()) if s.rest() else "nothing"}'
        )
    query = s.string()
    s.expect(")")
    s.end()
    if not query.strip():
        s.fail("empty query")
    if len(query) > MAX_QUERY_CHARS:
        s.fail(f"query of {len(query)} characters (at most {MAX_QUERY_CHARS})")
    return Search(query)


def parse_summary(text: str, shown: Collection[int]) -> Summary:
    """``None`` or a string of facts with at least one citation, every one in ``shown``."""
    s = _Scanner("summary", text)
    if s.take("None"):
        s.end()
        return Summary(None, ())
    body = s.string()
    s.end()
    citations = _citations("summary", body, shown)
    if not citations:
        s.fail("summary has no [link_id=N] citation (write None if nothing is relevant)")
    if not strip_citations(body):
        s.fail("summary has citations but no facts")
    return Summary(body, citations)


def parse_answer(text: str, valid: Collection[int]) -> Answer:
    """A non-empty answer string; >= 1 citation iff ``valid`` is non-empty, all in ``valid``."""
    s = _Scanner("answer", text)
    body = s.string()
    s.end()
    return _answer("answer", body, valid)


def parse_check(text: str, valid: Collection[int]) -> Keep | Revise:
    """``Keep()`` or ``Revise("<answer>")`` (the revised answer follows parse_answer's rules)."""
    s = _Scanner("check", text)
    if s.take("Keep()"):
        s.end()
        return Keep()
    if not s.take("Revise("):
        s.fail(f'expected Keep() or Revise("<answer>"), got {_shown(s.rest()) if s.rest() else "nothing"}')
    body = s.string()
    s.expect(")")
    s.end()
    return Revise(_answer("check", body, valid))


def parse_judgement(text: str) -> bool:
    """The Check_Answer judge's completion: ``True`` or ``False``."""
    s = _Scanner("judgement", text)
    for literal, value in (("True", True), ("False", False)):
        if s.take(literal):
            s.end()
            return value
    s.fail(f"expected True or False, got {_shown(s.rest()) if s.rest() else 'nothing'}")


_NUMBER = re.compile(r"[1-9][0-9]{0,5}")


def parse_ranking(text: str, k: int) -> tuple[str, int, list[int]]:
    """The ranker's verdict on K candidates numbered 1..K, as three lines::

        Explanation: <one line>
        Best: <n>
        Ranking: <n> > <n> > ...      (every candidate once, best first)

    Returns (explanation, best, ranking) with 0-based candidate indices.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ParseError(f"ranking: k must be a positive int, got {k!r}")
    if not isinstance(text, str):
        raise ParseError(f"ranking: expected str, got {type(text).__name__}")
    lines = [line.strip() for line in text.replace("\r\n", "\n").strip().split("\n")]
    if len(lines) != 3:
        raise ParseError(f"ranking: expected 3 lines (Explanation, Best, Ranking), got {len(lines)}")
    fields = []
    for line, label in zip(lines, ("Explanation:", "Best:", "Ranking:"), strict=True):
        if not line.startswith(label):
            raise ParseError(f"ranking: expected a line starting with {label!r}, got {_shown(line)}")
        fields.append(line[len(label) :].strip())
    explanation, best_text, ranking_text = fields
    if not explanation:
        raise ParseError("ranking: empty explanation")

    def number(field: str, where: str) -> int:
        if not _NUMBER.fullmatch(field) or int(field) > k:
            raise ParseError(f"ranking: {where} must be a candidate number 1..{k}, got {_shown(field, 20)}")
        return int(field) - 1

    best = number(best_text, "Best")
    ranking = [number(part.strip(), "each Ranking entry") for part in ranking_text.split(">")]
    if len(ranking) != k or sorted(ranking) != list(range(k)):
        raise ParseError(f"ranking: Ranking must list each of the {k} candidates exactly once")
    if ranking[0] != best:
        raise ParseError(f"ranking: Best is {best + 1} but the Ranking starts with {ranking[0] + 1}")
    return explanation, best, ranking
