"""The ranker's prompt (AI feedback): one step's input and its K samples -> best + ranking.

As in the paper, a plain zero-shot prompt for an instruction-tuned LLM: the step's
input, the K candidate outputs numbered 1..K, and a request for a one-line
explanation, the best candidate and a full ranking, in three lines that
agent.parsers.parse_ranking reads. Outside text cannot forge the prompt's own lines:
every line of the step input is indented under its heading, and each candidate is
collapsed onto its own numbered line.
"""

from __future__ import annotations

from collections.abc import Sequence

from prompts.actions import SPACE_LIKE_CHARS
from prompts.code import collapse

RANKER_STOP: list[str] = ["\n\n"]
"""The verdict has three lines, so the ranker must not stop at "\\n"; a blank line ends it."""

_TO_SPACE = str.maketrans({c: " " for c in SPACE_LIKE_CHARS})

INSTRUCTIONS = """You are grading one step of a search agent that answers questions by searching the web, \
summarizing what it found with [link_id=N] citations, and answering from those summaries. \
Below are the step's input and {k} candidate outputs for it. The best output follows the \
format the input asks for, states only facts supported by the input, cites the right \
link ids, and brings the agent closest to a correct answer."""

REPLY = """Reply with exactly three lines:
Explanation: <one sentence comparing the candidates>
Best: <number of the best candidate>
Ranking: <all {k} candidate numbers from best to worst, separated by " > ">"""


def _indent(text: str) -> list[str]:
    """Every line of ``text`` indented by four spaces, line-breaking characters flattened."""
    return ["    " + line.translate(_TO_SPACE).rstrip() for line in text.splitlines()] or ["    "]


def ranker_prompt(step_input: str, outputs: Sequence[str]) -> str:
    """The zero-shot ranking prompt for K = len(outputs) >= 1 candidates of one step."""
    if not isinstance(step_input, str):
        raise TypeError(f"step_input must be str, got {type(step_input).__name__}")
    if len(outputs) < 1:
        raise ValueError("ranker_prompt needs at least one candidate output")
    k = len(outputs)
    lines = [INSTRUCTIONS.format(k=k), "", "Step input:", *_indent(step_input), "", "Candidate outputs:"]
    lines += [f"[{i}] {collapse(out)}" for i, out in enumerate(outputs, 1)]
    lines += ["", REPLY.format(k=k)]
    return "\n".join(lines)


def format_ranking(explanation: str, best: int, ranking: Sequence[int]) -> str:
    """The verdict in the grammar parse_ranking reads (0-based indices in, 1-based numbers out)."""
    order = " > ".join(str(i + 1) for i in ranking)
    return f"Explanation: {collapse(explanation)}\nBest: {best + 1}\nRanking: {order}"
