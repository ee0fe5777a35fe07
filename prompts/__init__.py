"""Code-as-prompt templates for the agent's LLM steps, the ranker and the auto-eval judge.

Every prompt is a Python-like function (signature + docstring stating the task), then
(few-shot style) exemplars written as code, then the live case ending in ``NAME =``;
the model completes it on one line (``STOP``), in the grammar agent/parsers.py reads.
"""

from prompts.code import (
    COMPLETION_PREFIX,
    Note,
    escape,
    format_answer,
    format_check,
    format_decision,
    format_summary,
    unescape,
)
from prompts.judge import check_answer_prompt
from prompts.ranker import RANKER_STOP, format_ranking, ranker_prompt
from prompts.steps import (
    STOP,
    STYLES,
    Style,
    answer_prompt,
    decision_prompt,
    grounding_prompt,
    relevance_prompt,
    summarize_prompt,
)

__all__ = [
    "COMPLETION_PREFIX",
    "RANKER_STOP",
    "STOP",
    "STYLES",
    "Note",
    "Style",
    "answer_prompt",
    "check_answer_prompt",
    "decision_prompt",
    "escape",
    "format_answer",
    "format_check",
    "format_decision",
    "format_ranking",
    "format_summary",
    "grounding_prompt",
    "ranker_prompt",
    "relevance_prompt",
    "summarize_prompt",
    "unescape",
]
