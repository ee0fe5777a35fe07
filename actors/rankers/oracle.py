"""The oracle ranker: scores samples against the toy world's gold chain (an ablation ceiling).

It reads the question record's gold (``hops``: [{query, passage_id, entity}],
``gold_facts``: [[subject, relation, object]], ``answers``), which no other ranker
ever sees. Hop i counts as done once an informative note names the object of gold
fact i. Scores, higher = better:

- decision: ``Search`` naming the entity of the next hop (any pending hop for the
  comparison template) 2, plus 1 for the hop's keyword ("author", "born"...); half
  that for a later pending hop; ``Terminate()`` 3 once every hop is done, else 0;
- summarize (the hop whose entity the query names, else the next one): naming that
  hop's gold object 2, plus 1 when it cites the hop's gold passage; naming another
  hop's object 1; ``None`` 2 when no snippet is the hop's gold passage, else 0;
- answer: normalised exact match with a gold answer 3, containing one 1.5;
- relevance/grounding: the score of the answer kept or revised to, plus 0.25 for Keep().
"""

from __future__ import annotations

from actors.rankers.base import StepContext
from actors.rankers.critic import names, words
from agent.parsers import ParseError, parse_answer, parse_check, parse_decision, parse_summary
from agent.trajectory import Step
from core.scoring import exact_match
from prompts.actions import Keep, Revise, Search, Summary, strip_citations

COMPARISON_TEMPLATE = "older_company_founder"


class OracleRanker:
    """Gold-aware scores (see the module doc); unparseable samples score 0."""

    name = "oracle"

    def score(self, step: Step, ctx: StepContext) -> list[float]:
        gold = _check_gold(ctx)
        ids = [s.link_id for s in ctx.snippets]
        out = []
        for sample in step.samples:
            try:
                if step.kind == "decision":
                    out.append(_decision(parse_decision(sample.text), gold, ctx))
                elif step.kind == "summarize":
                    out.append(_summary(parse_summary(sample.text, ids), gold, ctx))
                elif step.kind == "answer":
                    out.append(_answer(parse_answer(sample.text, ids).plain, gold))
                else:
                    verdict = parse_check(sample.text, ids)
                    if isinstance(verdict, Keep):
                        kept = strip_citations(ctx.answer) if ctx.answer else None
                        out.append(0.25 + (_answer(kept, gold) if kept else 0.0))
                    else:
                        assert isinstance(verdict, Revise)
                        out.append(_answer(verdict.answer.plain, gold))
            except ParseError:
                out.append(0.0)
        return out


def _check_gold(ctx: StepContext) -> dict:
    gold = ctx.gold
    if not isinstance(gold, dict) or not isinstance(gold.get("hops"), list) or "gold_facts" not in gold:
        raise ValueError(f"oracle: question {ctx.question_id!r} has no gold record with 'hops' and 'gold_facts'")
    return gold


def _objects(gold: dict) -> list[str]:
    """The gold object of each hop (hop i follows gold fact i)."""
    return [str(gold["gold_facts"][i][2]) for i in range(len(gold["hops"]))]


def _pending(gold: dict, ctx: StepContext) -> list[int]:
    notes = [n.summary for n in ctx.notes if n.summary is not None]
    return [i for i, obj in enumerate(_objects(gold)) if not any(names(n, obj) for n in notes)]


def _hop_match(query: str, hop: dict) -> float:
    entity = hop["entity"]
    keyword = [w for w in words(hop["query"]) if w not in set(words(entity))]
    return 2.0 * names(query, entity) + 1.0 * bool(keyword and all(w in words(query) for w in keyword))


def _decision(action: object, gold: dict, ctx: StepContext) -> float:
    pending = _pending(gold, ctx)
    if not isinstance(action, Search):
        return 0.0 if pending else 3.0
    if not pending:
        return 0.0
    reachable = pending if gold.get("template") == COMPARISON_TEMPLATE else pending[:1]
    hops = gold["hops"]
    best = max(_hop_match(action.query, hops[i]) for i in reachable)
    later = max((0.5 * _hop_match(action.query, hops[i]) for i in pending if i not in reachable), default=0.0)
    return max(best, later)


def _summary(summary: Summary, gold: dict, ctx: StepContext) -> float:
    hops, objects = gold["hops"], _objects(gold)
    query = ctx.past_queries[-1] if ctx.past_queries else ""
    named = [i for i, h in enumerate(hops) if names(query, h["entity"])]
    pending = _pending(gold, ctx)
    hop = named[0] if named else (pending[0] if pending else len(hops) - 1)
    gold_pid = hops[hop]["passage_id"]
    if summary.text is None:
        return 0.0 if any(s.doc_id == gold_pid for s in ctx.snippets) else 2.0
    text = strip_citations(summary.text)
    if names(text, objects[hop]):
        cited = {s.doc_id for s in ctx.snippets if s.link_id in summary.citations}
        return 2.0 + 1.0 * (gold_pid in cited)
    return 1.0 if any(names(text, o) for o in objects) else 0.0


def _answer(plain: str, gold: dict) -> float:
    answers = [a for a in gold.get("answers", []) if isinstance(a, str)]
    if not answers:
        return 0.0
    if exact_match(plain, answers):
        return 3.0
    return 1.5 if any(names(plain, a) for a in answers) else 0.0

