"""A trajectory as plain text for a terminal (``rest-react episode`` prints it).

Every step in order: LLM steps list their K samples with perplexity, ``>`` on the
sample the episode continued with, ``R`` on the ranker's pick when there is one, and
``PARSE FAIL`` on samples that did not parse; search steps list the query and the
snippets (link id, title, shortened text). The last lines give the answer and why
the episode ended.
"""

from __future__ import annotations

from agent.trajectory import Step, Trajectory

SNIPPET_CHARS = 160
SAMPLE_CHARS = 200


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def format_trajectory(traj: Trajectory) -> str:
    """The whole trajectory as readable multi-line text (see the module doc)."""
    lines = [
        f"trajectory {traj.id}  (question {traj.question_id}, policy v{traj.policy_version})",
        f"question: {shorten(traj.question, 500)}",
    ]
    for n, step in enumerate(traj.steps, start=1):
        lines.extend(_format_step(n, step))
    lines.append(f"answer: {traj.answer if traj.answer is not None else '(none)'}")
    lines.append(f"ended: {traj.end_reason}  (searches used: {traj.searches_used})")
    return "\n".join(lines)


def _format_step(n: int, step: Step) -> list[str]:
    head = f"[{n}] {step.kind}"
    if step.kind == "search":
        out = [f"{head}  query: {step.query}"]
        out += [f"      [link_id={s.link_id}] {s.title}: {shorten(s.text, SNIPPET_CHARS)}" for s in step.snippets]
        if not step.snippets:
            out.append("      (no results)")
        return out
    if step.kind == "final":
        return [f"{head}  {step.output}"]
    out = [f"{head}  (v{step.policy_version}, {len(step.samples)} samples)"]
    for i, sample in enumerate(step.samples):
        mark = ">" if i == step.chosen else " "
        mark += "R" if i == step.ranker_best else " "
        ok = i >= len(step.parse_ok) or step.parse_ok[i]
        score = f" score {step.scores[i]:.3g}" if step.scores and i < len(step.scores) else ""
        flag = "" if ok else "  PARSE FAIL"
        out.append(
            f"  {mark} #{i} ppl {sample.perplexity:8.3f}{score}{flag}  {shorten(sample.text, SAMPLE_CHARS)}"
        )
    if step.error:
        out.append(f"      parse errors: {shorten(step.error, 400)}")
    if step.output is not None:
        out.append(f"      -> {step.output}")
    return out
