"""The 5-shot ``Check_Answer(question, answer, reference)`` auto-eval prompt (Bamboogle).

A code-as-prompt judge like the agent's steps: a function whose docstring says what
counts as correct (paraphrases and extra detail are fine; wrong, missing or only
partly right answers are not), five exemplars (``prompts.exemplars.CHECK_ANSWER``)
and the live case ending in ``CORRECT =``, completed with `` True`` or `` False`` on
one line (agent.parsers.parse_judgement).
"""

from __future__ import annotations

from prompts import exemplars as ex
from prompts.code import cited_lit
from prompts.steps import assemble

CHECK_ANSWER_DOC = '''def Check_Answer(question: str, answer: str, reference: str) -> bool:
    """Return whether ANSWER gives the same answer to QUESTION as REFERENCE does.

    Paraphrases, other spellings of the same name and extra correct detail count as
    correct. A different answer, no answer, or only part of an answer that needs
    several items (one of two founders) is not correct. CORRECT is True or False.
    """'''
CHECK_ANSWER_HEAD = 'def Check_Answer(QUESTION, ANSWER, REFERENCE): """CORRECT: True or False."""'


def check_block(question: str, answer: str, reference: str, output: str | None = None) -> list[str]:
    lines = [
        f"QUESTION = {cited_lit(question)}",
        f"ANSWER = {cited_lit(answer)}",
        f"REFERENCE = {cited_lit(reference)}",
    ]
    return [*lines, "CORRECT =" if output is None else f"CORRECT = {output}"]


def check_answer_prompt(question: str, answer: str, reference: str) -> str:
    """The 5-shot judge prompt for one (question, answer, reference) triple."""
    live = check_block(question, answer, reference)
    return assemble(
        "fewshot",
        CHECK_ANSWER_DOC,
        CHECK_ANSWER_HEAD,
        ex.CHECK_ANSWER,
        lambda e: check_block(e.question, e.answer, e.reference, str(e.correct)),
        live,
    )
