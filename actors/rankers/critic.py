"""The label-free critic: additive, inspectable content checks on every sample (the default ranker).

It never sees gold answers or gold facts (a context carrying gold is refused). Each
sample gets a dict of named features (``Critic.features``) and its score is their
weighted sum with the weights of ``WEIGHTS`` below; ties are broken later by
perplexity (``learner.selection.best_sample``). It checks *content* (the query names an
entity already seen; a note copied or restated from a snippet and naming the queried
entity; the answer taken from the latest note and not an entity already searched), not
format alone: a format-only critic ranks no better than random (docs/history.md).

"Entities" here are runs of capitalised words ("Lucy Gray", "The Sleeping Moon"),
less leading question and function words; "names X" means X's words appear in order
as whole words (case-insensitive). A note is *informative* when its summary is not
None.

Restated summaries (``summary.grounded``): a sentence whose every name and number is in
a cited snippet counts as a fact in other words, not only a word-for-word copy. A small
policy sampling at high temperature misquotes names, so a critic that credits only
copies picks None where a snippet did name the looked-up entity, and a policy trained
on those picks learns to note nothing. How the critic's picks compare with the
oracle's, and what this feature changed, is in docs/history.md.

Features that are equal for every sample of a step (e.g. the query's words when
summarizing) cannot change the ranking; they are there to be read.
"""

from __future__ import annotations

import re

from actors.rankers.base import StepContext
from agent.parsers import ParseError, parse_answer, parse_check, parse_decision, parse_summary
from agent.trajectory import Step
from prompts.actions import Answer, Keep, Revise, Search, Summary, strip_citations

#: feature -> weight; a sample's score is sum(weight * value). Values are 0/1 flags
#: unless the comment says "share" (0..1).
WEIGHTS: dict[str, float] = {
    # every step
    "parses": 2.0,  # follows the step's grammar; citations point at snippets the step was shown
    "unparseable": -10.0,  # does not parse (the only feature such a sample gets)
    # decision: Search("<query>")
    "query.names_known_entity": 2.0,  # names an entity of the question or a note (0.5: only a shorter run of it)
    "query.names_no_known_entity": -2.0,  # names no such entity, not even in part (a made-up lookup)
    "query.names_frontier_entity": 1.0,  # ...one not searched yet, from the question or the latest note
    "query.novelty": 1.0,  # share: 1 - the highest word overlap (Jaccard) with a past query
    "query.repeats_past_query": -1.0,  # the same words as a past query (same results again)
    "query.entity_already_noted": -1.5,  # its entity was searched before and that search gave a note
    # decision: Terminate()
    "terminate.has_candidate": 4.0,  # the latest note names an entity nobody searched (a candidate answer)
    "terminate.without_notes": -2.0,  # no informative note at all
    # summarize ("its entity": the known entity the query looks up, see ``looked_up_entity``)
    "summary.none_justified": 3.0,  # None, and no snippet names its entity (or it has none: an off-track search)
    "summary.none_despite_match": -1.0,  # None although a snippet names its entity
    "summary.off_question": -3.0,  # a summary of a search that looks up no entity of the question or the notes
    "summary.copied": 3.0,  # share of its sentences (>= 4 words) copied word for word from a cited snippet
    "summary.grounded": 2.0,  # share of the others that restate one: every name and number in them is in it
    "summary.ungrounded": -4.0,  # share of its sentences that are neither (made up, garbled, fragments)
    "summary.names_query_entity": 1.5,  # a copied/restated sentence names its entity (0.5: only a word of its name)
    "summary.names_new_entity": 1.5,  # a copied/restated sentence names an entity beyond the question and queries
    "summary.query_terms": 1.0,  # share of the query's other words (e.g. "born") in the copied/restated sentences
    "summary.cites_entity_snippet": 1.0,  # cites a snippet whose title names its entity
    "summary.off_entity": -3.0,  # no cited snippet names its entity at all
    # answer; also the answer a relevance/grounding check keeps or revises to
    "answer.grounded": 2.0,  # named in an informative note
    "answer.in_latest_note": 1.5,  # named in the latest informative note
    "answer.cited_support": 1.0,  # share of its citations whose snippet names it
    "answer.is_question_entity": -3.0,  # the question already names it
    "answer.is_searched_entity": -2.0,  # a past query names it (the entity looked up, not the fact found)
    "answer.short": 0.5,  # 1 to 5 words
    # relevance / grounding
    "check.keep": 0.5,  # Keep(): with an equally good answer, not changing it is preferred
    "check.revise_ungrounded": -2.0,  # Revise() to an answer no informative note names
}

_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_CITATION = re.compile(r"\[link_id=(\d+)\]")
#: capitalised words that open a phrase without being part of a name
_LEADING = frozenset(
    "who what where which when whose whom how why in on at as born today is was did does do for from of by to "
    "after before the a an".split()
)
_ARTICLES = frozenset({"the", "a", "an"})
#: a copied "sentence" shorter than this is a fragment (a bare name), not a fact
MIN_COPIED_WORDS = 4
_STOPWORDS = frozenset("the a an of in on at to by for and or is was who what where which when did does".split())


# ---------------------------------------------------------------- reading text


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters and digits; inner ' and - kept)."""
    return [w.lower() for w in _WORD.findall(text)]


def names(text: str | None, phrase: str | None) -> bool:
    """Whether ``phrase``'s words appear in ``text`` in order, as whole words (case-insensitive)."""
    if not text or not phrase:
        return False
    p = words(phrase)
    return bool(p) and f" {' '.join(p)} " in f" {' '.join(words(text))} "


def entities(text: str | None) -> list[str]:
    """Runs of capitalised words in ``text`` (citations removed), minus leading function words."""
    if not text:
        return []
    text = strip_citations(text)
    runs: list[list[str]] = []
    prev_end = -1
    for m in _WORD.finditer(text):
        w = m.group()
        if not w[0].isupper():
            prev_end = -1
            continue
        if prev_end >= 0 and text[prev_end : m.start()] == " ":
            runs[-1].append(w)
        else:
            runs.append([w])
        prev_end = m.end()
    out: list[str] = []
    for run in runs:
        i = 0
        while i < len(run) and run[i].lower() in _LEADING and not (
            run[i].lower() in _ARTICLES and i + 1 < len(run)
        ):
            i += 1
        phrase = " ".join(run[i:])
        if phrase and phrase not in out:
            out.append(phrase)
    return out


def _informative(ctx: StepContext) -> list[str]:
    return [n.summary for n in ctx.notes if n.summary is not None]


def known_entities(ctx: StepContext) -> list[str]:
    """Entities of the question and of every informative note."""
    found = entities(ctx.question)
    for s in _informative(ctx):
        found += [e for e in entities(s) if e not in found]
    return found


def _searched(entity: str, ctx: StepContext) -> bool:
    return any(names(q, entity) for q in ctx.past_queries)


def frontier(ctx: StepContext) -> list[str]:
    """Entities not searched yet, of the question or the latest informative note (the next hop)."""
    notes = _informative(ctx)
    pool = entities(ctx.question) + (entities(notes[-1]) if notes else [])
    return [e for e in dict.fromkeys(pool) if not _searched(e, ctx)]


def query_entity(query: str, ctx: StepContext) -> str | None:
    """What a query is about: the longest known entity it names, else its own longest capitalised run."""
    named = [e for e in known_entities(ctx) if names(query, e)]
    pool = named or entities(query)
    return max(pool, key=lambda e: len(words(e))) if pool else None


def _jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _stem(w: str) -> str:
    return w[:5]


# ---------------------------------------------------------------- the critic


def weighted(features: dict[str, float]) -> float:
    """A sample's score: the weighted sum of its features (rounded, so equal features tie exactly)."""
    return round(sum(WEIGHTS[k] * v for k, v in features.items()), 6)


class Critic:
    """The label-free ranker (see the module doc); ``features`` shows why a sample scored as it did."""

    name = "critic"

    def score(self, step: Step, ctx: StepContext) -> list[float]:
        return [weighted(f) for f in self.features(step, ctx)]

    def features(self, step: Step, ctx: StepContext) -> list[dict[str, float]]:
        """Named feature values of each sample of ``step`` (keys of ``WEIGHTS``)."""
        if ctx.gold is not None:
            raise ValueError("critic: it is label-free and must never be given gold (StepContext.gold must be None)")
        out = []
        for sample in step.samples:
            try:
                parsed = _parse(step.kind, sample.text, ctx)
            except ParseError:
                out.append({"unparseable": 1.0})
                continue
            out.append({"parses": 1.0, **_content(step.kind, parsed, ctx)})
        return out


def _parse(kind: str, text: str, ctx: StepContext) -> object:
    ids = [s.link_id for s in ctx.snippets]
    if kind == "decision":
        return parse_decision(text)
    if kind == "summarize":
        return parse_summary(text, ids)
    if kind == "answer":
        return parse_answer(text, ids)
    if kind in ("relevance", "grounding"):
        return parse_check(text, ids)
    raise ValueError(f"critic: {kind!r} is not an LLM step")


def _content(kind: str, parsed: object, ctx: StepContext) -> dict[str, float]:
    if isinstance(parsed, Search):
        return search_features(parsed.query, ctx)
    if isinstance(parsed, Summary):
        return summary_features(parsed, ctx)
    if isinstance(parsed, Answer):
        return answer_features(parsed, ctx)
    if isinstance(parsed, Keep):
        kept = _current_answer(ctx)
        return {"check.keep": 1.0, **(answer_features(kept, ctx) if kept else {})}
    if isinstance(parsed, Revise):
        revised = answer_features(parsed.answer, ctx)
        return {**revised, "check.revise_ungrounded": 1.0 - revised["answer.grounded"]}
    return terminate_features(ctx)


def _current_answer(ctx: StepContext) -> Answer | None:
    """The answer under check (relevance/grounding), with the link ids it cites."""
    if ctx.answer is None:
        return None
    return Answer(ctx.answer, tuple(dict.fromkeys(int(n) for n in _CITATION.findall(ctx.answer))))


def search_features(query: str, ctx: StepContext) -> dict[str, float]:
    """Features of ``Search(query)``: does it follow up what the agent has seen, without repeating itself?"""
    known = known_entities(ctx)
    full = any(names(query, e) for e in known)
    partial = any(names(e, q) for q in entities(query) for e in known)
    target = query_entity(query, ctx)
    qw = words(query)
    past = [words(q) for q in ctx.past_queries]
    return {
        "query.names_known_entity": 1.0 if full else 0.5 if partial else 0.0,
        "query.names_no_known_entity": float(not (full or partial)),
        "query.names_frontier_entity": float(any(names(query, e) for e in frontier(ctx))),
        "query.novelty": 1.0 - max((_jaccard(qw, p) for p in past), default=0.0),
        "query.repeats_past_query": float(qw in past),
        "query.entity_already_noted": float(
            target is not None and any(n.summary is not None and names(n.query, target) for n in ctx.notes)
        ),
    }


def terminate_features(ctx: StepContext) -> dict[str, float]:
    """Features of ``Terminate()``: is there a candidate answer to give?"""
    notes = _informative(ctx)
    candidates = [
        e for e in (entities(notes[-1]) if notes else []) if not _searched(e, ctx) and not names(ctx.question, e)
    ]
    return {"terminate.has_candidate": float(bool(candidates)), "terminate.without_notes": float(not notes)}


def looked_up_entity(query: str, ctx: StepContext) -> str | None:
    """The known entity a query looks up: the longest one it names, in full or by a shorter run of its name."""
    runs = entities(query)
    named = [e for e in known_entities(ctx) if names(query, e) or any(names(e, r) for r in runs)]
    return max(named, key=lambda e: len(words(e))) if named else None


def summary_features(summary: Summary, ctx: StepContext) -> dict[str, float]:
    """Features of a summary of the last search's snippets (``ctx.snippets``)."""
    query = ctx.past_queries[-1] if ctx.past_queries else ""
    target = looked_up_entity(query, ctx)
    if summary.text is None:
        match = target is not None and any(names(f"{s.title} {s.text}", target) for s in ctx.snippets)
        return {"summary.none_justified": float(not match), "summary.none_despite_match": float(match)}
    text = strip_citations(summary.text)
    cited = [s for s in ctx.snippets if s.link_id in summary.citations]
    sentences = [x for x in _SENTENCE.split(text) if words(x)]
    copied = [x for x in sentences if len(words(x)) >= MIN_COPIED_WORDS and any(names(s.text, x) for s in cited)]
    grounded = [x for x in sentences if x not in copied and restates(x, cited)]
    share = len(copied) / len(sentences) if sentences else 0.0
    g_share = len(grounded) / len(sentences) if sentences else 0.0
    copy = " ".join(copied + grounded)
    seen = [ctx.question, *ctx.past_queries]
    new = [e for e in entities(copy) if not any(names(t, e) for t in seen)]
    entity_words = set(words(target or ""))
    terms = [w for w in words(query) if w not in entity_words and w not in _STOPWORDS]
    stems = {_stem(w) for w in words(copy)}
    out = {
        "summary.copied": share,
        "summary.grounded": g_share,
        "summary.ungrounded": 1.0 - share - g_share,
        "summary.names_new_entity": float(bool(new)),
        "summary.query_terms": sum(_stem(w) in stems for w in terms) / len(terms) if terms else 0.0,
    }
    if target is None:
        return {**out, "summary.off_question": 1.0}
    name_words = [w for w in words(target) if w not in _ARTICLES]
    return {
        **out,
        "summary.names_query_entity": 1.0 if names(copy, target) else 0.5 if set(name_words) & set(words(copy)) else 0.0,
        "summary.cites_entity_snippet": float(any(names(s.title, target) for s in cited)),
        "summary.off_entity": float(not any(names(f"{s.title} {s.text}", target) for s in cited)),
    }


def restates(sentence: str, cited: list) -> bool:
    """A fact in other words: at least two names or numbers, each of them in one cited snippet."""
    found = entities(sentence) + [w for w in words(sentence) if w.isdigit()]
    return len(found) >= 2 and any(all(names(f"{s.title} {s.text}", f) for f in found) for s in cited)


def answer_features(answer: Answer, ctx: StepContext) -> dict[str, float]:
    """Features of an answer (or of the answer a check keeps or revises to), read against the notes."""
    plain = answer.plain
    notes = _informative(ctx)
    by_id = {s.link_id: s for s in ctx.snippets}
    support = [names(by_id[i].text, plain) or names(by_id[i].title, plain) for i in answer.citations if i in by_id]
    return {
        "answer.grounded": float(any(names(n, plain) for n in notes)),
        "answer.in_latest_note": float(bool(notes) and names(notes[-1], plain)),
        "answer.cited_support": sum(support) / len(answer.citations) if answer.citations else 0.0,
        "answer.is_question_entity": float(names(ctx.question, plain)),
        "answer.is_searched_entity": float(any(names(q, plain) for q in ctx.past_queries)),
        "answer.short": float(1 <= len(words(plain)) <= 5),
    }
