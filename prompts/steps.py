"""The five LLM steps' prompts, "code as prompt", in two styles with one output grammar.

``fewshot`` (pretrained models): a typed function signature whose docstring states the
task and the fields, the step's exemplars written as code, then the live case.
``zeroshot`` (our fine-tuned tiny models): a one-line signature-with-docstring header,
then the live case. Both end with the live block's last line, ``NAME =``, which the
model completes on one line (see agent/parsers.py for the grammar). Exemplars and the
live case go through the same block renderer, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from core.search import Snippet
from prompts import exemplars as ex
from prompts.code import Note, cited_lit, list_lines, lit

Style = Literal["fewshot", "zeroshot"]
STYLES: tuple[str, ...] = ("fewshot", "zeroshot")
STOP: list[str] = ["\n"]
"""Every completion is one line."""

E = TypeVar("E")

DECISION_DOC = '''def choose_action(QUESTION: str, PAST_ACTIONS: list[Action], REMAINING_SEARCHES: int) -> Action:
    """Choose the next action of a search agent answering QUESTION.

    PAST_ACTIONS are the searches made so far, oldest first: each Action holds the query
    sent to the search engine and the summary of what it found, with [link_id=N]
    citations (summary=None: nothing relevant was found). REMAINING_SEARCHES is how many
    searches are still allowed. ACTION_SELECTED is Search("<query>") to look up the next
    missing fact (a short query naming one entity; rephrase a query that found nothing),
    or Terminate() once the summaries answer QUESTION or no searches remain.
    """'''
SUMMARIZE_DOC = '''def summarize(QUESTION: str, QUERY: str, SNIPPETS: list[Snippet]) -> str | None:
    """Keep what the search results say that helps answer QUESTION.

    SNIPPETS are the results of searching QUERY; link_id identifies each one. SUMMARY
    states the relevant facts in the snippets' own words, each followed by the citation
    of its snippet, like [link_id=4]. SUMMARY is None when no snippet is relevant.
    """'''
ANSWER_DOC = '''def answer(QUESTION: str, NOTES: list[Note]) -> str:
    """Answer QUESTION from the notes taken while searching.

    NOTES are the past searches, oldest first: each Note holds a query and the summary of
    its results with [link_id=N] citations (summary=None: nothing relevant). ANSWER is
    a short answer (a name, a place, a number), followed by the citations of the notes
    that support it, like [link_id=4].
    """'''
RELEVANCE_DOC = '''def check_relevance(QUESTION: str, ANSWER: str) -> Verdict:
    """Check that ANSWER answers what QUESTION asks, in the form it asks for.

    VERDICT is Keep() when it does. Otherwise VERDICT is Revise("<answer>"): the short
    answer QUESTION asks for, taken from ANSWER, with ANSWER's citations like [link_id=4].
    """'''
GROUNDING_DOC = '''def check_grounding(QUESTION: str, NOTES: list[Note], ANSWER: str) -> Verdict:
    """Check that every claim in ANSWER is supported by the notes it cites.

    NOTES are the past searches with summaries citing [link_id=N]. VERDICT is Keep()
    when the cited notes support ANSWER. Otherwise VERDICT is Revise("<answer>"): the
    answer the notes do support, citing the right link ids.
    """'''

DECISION_HEAD = 'def decide(QUESTION, PAST_ACTIONS, REMAINING_SEARCHES): """ACTION_SELECTED: Search("query") or Terminate()."""'
SUMMARIZE_HEAD = 'def summarize(QUESTION, QUERY, SNIPPETS): """SUMMARY: relevant facts, each cited [link_id=N], or None."""'
ANSWER_HEAD = 'def answer(QUESTION, NOTES): """ANSWER: a short answer citing [link_id=N]."""'
RELEVANCE_HEAD = (
    'def check_relevance(QUESTION, ANSWER): """VERDICT: Keep() if on the question, else Revise("answer")."""'
)
GROUNDING_HEAD = 'def check_grounding(QUESTION, NOTES, ANSWER): """VERDICT: Keep() if NOTES back it, else Revise("answer")."""'


def assemble(
    style: Style, doc: str, head: str, shots: Sequence[E], block: Callable[[E], list[str]], live: list[str]
) -> str:
    """Header, then (few-shot only) the exemplars as ``# Example i`` blocks, then the live block."""
    if style == "zeroshot":
        return "\n".join([head, *live])
    if style != "fewshot":
        raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")
    parts = [doc, ""]
    for i, shot in enumerate(shots, 1):
        parts += ["", f"# Example {i}", *block(shot)]
    parts += ["", "# Current case", *live]
    return "\n".join(parts)


def _notes(name: str, kind: str, notes: Sequence[Note]) -> list[str]:
    items = [f"{kind}(query={lit(n.query)}, summary={cited_lit(n.summary)})" for n in notes]
    return list_lines(name, items)


def _snippets(snippets: Sequence[Snippet]) -> list[str]:
    items = []
    for s in snippets:
        if not isinstance(s.link_id, int) or isinstance(s.link_id, bool) or s.link_id < 0:
            raise ValueError(f"snippet link_id must be a non-negative int, got {s.link_id!r}")
        items.append(f"Snippet(link_id={s.link_id}, title={lit(s.title)}, text={lit(s.text)})")
    return list_lines("SNIPPETS", items)


def _done(lines: list[str], target: str, output: str | None) -> list[str]:
    """Append the target line: ``NAME =`` (live) or ``NAME = <output>`` (exemplar)."""
    return [*lines, f"{target} =" if output is None else f"{target} = {output}"]


def decision_block(
    question: str, notes: Sequence[Note], remaining: int, output: str | None = None
) -> list[str]:
    if not isinstance(remaining, int) or isinstance(remaining, bool) or remaining < 0:
        raise ValueError(f"remaining_searches must be a non-negative int, got {remaining!r}")
    lines = [
        f"QUESTION = {lit(question)}",
        *_notes("PAST_ACTIONS", "Action", notes),
        f"REMAINING_SEARCHES = {remaining}",
    ]
    return _done(lines, "ACTION_SELECTED", output)


def summarize_block(
    question: str, query: str, snippets: Sequence[Snippet], output: str | None = None
) -> list[str]:
    lines = [f"QUESTION = {lit(question)}", f"QUERY = {lit(query)}", *_snippets(snippets)]
    return _done(lines, "SUMMARY", output)


def answer_block(question: str, notes: Sequence[Note], output: str | None = None) -> list[str]:
    return _done([f"QUESTION = {lit(question)}", *_notes("NOTES", "Note", notes)], "ANSWER", output)


def relevance_block(question: str, answer: str, output: str | None = None) -> list[str]:
    return _done([f"QUESTION = {lit(question)}", f"ANSWER = {cited_lit(answer)}"], "VERDICT", output)


def grounding_block(
    question: str, answer: str, notes: Sequence[Note], output: str | None = None
) -> list[str]:
    lines = [f"QUESTION = {lit(question)}", *_notes("NOTES", "Note", notes), f"ANSWER = {cited_lit(answer)}"]
    return _done(lines, "VERDICT", output)


def decision_prompt(question: str, notes: Sequence[Note], remaining_searches: int, style: Style) -> str:
    """Question + past actions + remaining searches -> ``Search("<query>")`` | ``Terminate()``."""
    live = decision_block(question, notes, remaining_searches)
    shots = ex.DECISION
    return assemble(
        style,
        DECISION_DOC,
        DECISION_HEAD,
        shots,
        lambda e: decision_block(e.question, e.notes, e.remaining, e.output),
        live,
    )


def summarize_prompt(question: str, query: str, snippets: Sequence[Snippet], style: Style) -> str:
    """Question + query + snippets -> facts with ``[link_id=N]`` citations, or ``None``."""
    live = summarize_block(question, query, snippets)
    shots = ex.SUMMARIZE
    return assemble(
        style,
        SUMMARIZE_DOC,
        SUMMARIZE_HEAD,
        shots,
        lambda e: summarize_block(e.question, e.query, e.snippets, e.output),
        live,
    )


def answer_prompt(question: str, notes: Sequence[Note], style: Style) -> str:
    """Question + notes -> ``"<short answer> [link_id=N]"``."""
    live = answer_block(question, notes)
    return assemble(
        style, ANSWER_DOC, ANSWER_HEAD, ex.ANSWER, lambda e: answer_block(e.question, e.notes, e.output), live
    )


def relevance_prompt(question: str, answer: str, style: Style) -> str:
    """Question + answer -> ``Keep()`` | ``Revise("<answer>")`` (is the answer on the question?)."""
    live = relevance_block(question, answer)
    return assemble(
        style,
        RELEVANCE_DOC,
        RELEVANCE_HEAD,
        ex.RELEVANCE,
        lambda e: relevance_block(e.question, e.answer, e.output),
        live,
    )


def grounding_prompt(question: str, answer: str, notes: Sequence[Note], style: Style) -> str:
    """Question + notes + answer -> ``Keep()`` | ``Revise("<answer>")`` (is every claim supported?)."""
    live = grounding_block(question, answer, notes)
    shots = ex.GROUNDING
    return assemble(
        style,
        GROUNDING_DOC,
        GROUNDING_HEAD,
        shots,
        lambda e: grounding_block(e.question, e.answer, e.notes, e.output),
        live,
    )
