"""Bamboogle-style compositional questions over a toy world, with their gold chains.

Eight templates: seven chains that follow functional relations from a named
entity (2 or 3 hops, e.g. "Who founded the company that published <book>?") and
one comparison ("Who founded the older company, <A> or <B>?": search both, compare
the years, read the older one's founder from its passage). The plain "Which was
founded earlier, A or B?" would put its answer in the question, so it asks for the
founder instead. Relations are functional, so every chain has exactly one answer;
the comparison only pairs companies founded in different years.

A question record (what ``toyworld.build`` writes, one JSON line each)::

    {"id", "question", "answers": [gold], "template",
     "gold_facts": [[subject name, relation, object name or value], ...],
     "gold_passages": [passage id, ...],
     "hops": [{"query": noise-free search query, "passage_id": ..., "entity": name}, ...]}

``gold_facts``, ``gold_passages`` and ``hops`` serve analysis, the oracle ranker and
the demonstrator; the agent never sees them. A hop's query is "<entity name>
<keyword>" (``HOP_KEYWORDS``), which BM25 ranks the hop's passage for in the top 3.

Drafts are dropped when they would allow a shortcut: the answer appears in the
question; some passage names both ends of gold facts from two different hops (one
search would do two hops' work, e.g. a publisher headquartered in the very city
where its founder was born); or the answer is named by a hop passage other than
the one whose fact yields it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from toyworld.graph import World
from toyworld.render import Corpus

#: the word a hop query adds to the entity's name, per relation followed from that entity
HOP_KEYWORDS: dict[str, str] = {
    "published_by": "publisher", "written_by": "author", "directed_by": "director",
    "produced_by": "producer", "founded_by": "founder", "born_in": "born", "studied_at": "studied",
    "located_in": "located", "headquartered_in": "headquarters", "founded_year": "founded",
}


@dataclass(frozen=True)
class ChainTemplate:
    """Start at an entity of ``start`` type and follow ``relations``; the last object is the answer."""

    name: str
    start: str
    relations: tuple[str, ...]
    phrasings: tuple[str, ...]  # with {x}: the start entity's name


CHAINS: tuple[ChainTemplate, ...] = (
    ChainTemplate("publisher_founder", "book", ("published_by", "founded_by"), (
        "Who founded the company that published {x}?", "Who is the founder of the publisher of {x}?")),
    ChainTemplate("author_birth_city", "book", ("written_by", "born_in"), (
        "In which city was the author of {x} born?", "Where was the person who wrote {x} born?")),
    ChainTemplate("director_school", "film", ("directed_by", "studied_at"), (
        "Where did the director of {x} study?", "Which school did the person who directed {x} attend?")),
    ChainTemplate("author_birth_country", "book", ("written_by", "born_in", "located_in"), (
        "In which country was the author of {x} born?", "The writer of {x} was born in which country?")),
    ChainTemplate("publisher_founder_birth_city", "book", ("published_by", "founded_by", "born_in"), (
        "In which city was the founder of the company that published {x} born?",
        "Where was the founder of the publisher of {x} born?")),
    ChainTemplate("studio_country", "film", ("produced_by", "headquartered_in", "located_in"), (
        "In which country is the studio that produced {x} headquartered?",
        "The company that produced {x} has its headquarters in which country?")),
    ChainTemplate("founder_school_city", "company", ("founded_by", "studied_at", "located_in"), (
        "In which city is the school where the founder of {x} studied?",
        "Where is the school that the founder of {x} attended located?")),
)

COMPARISON = "older_company_founder"
COMPARISON_PHRASINGS: tuple[str, ...] = (
    "Who founded the older company, {a} or {b}?",
    "Who started whichever of {a} and {b} was founded first?",
    "Who is the founder of whichever company was founded earlier: {a} or {b}?",
)

TEMPLATES: tuple[str, ...] = tuple(t.name for t in CHAINS) + (COMPARISON,)


@dataclass(frozen=True)
class Draft:
    """A question before it gets an id and a split; ``subjects`` are its gold facts' subject ids."""

    record: dict
    subjects: frozenset[str]


def generate_questions(world: World, corpus: Corpus) -> list[Draft]:
    """Every question the templates can ask about ``world`` (deterministic order and wording)."""
    rng = random.Random(f"questions:{world.seed}")
    ctx = _Context(world, corpus, mention_index(world, corpus))
    drafts = [d for t in CHAINS for e in world.of_type(t.start) if (d := _chain(ctx, t, e.id, rng))]
    drafts += _comparisons(ctx, rng)
    seen: set[str] = set()
    out = []
    for d in drafts:
        if d.record["question"] not in seen:
            seen.add(d.record["question"])
            out.append(d)
    return out


def mention_index(world: World, corpus: Corpus) -> dict[str, set[str]]:
    """Name or value -> ids of the passages that name it (a passage names its entity and its facts' objects)."""
    index: dict[str, set[str]] = {}
    for e in world.entities.values():
        index.setdefault(e.name, set())
    for (subject, relation), pid in corpus.where.items():
        index[world.label(subject)].add(pid)
        index.setdefault(world.label(world.obj(subject, relation)), set()).add(pid)
    return index


@dataclass(frozen=True)
class _Context:
    """What every draft needs: the world, where each fact is stated, and who names what."""

    world: World
    corpus: Corpus
    mentions: dict[str, set[str]]


def _hop(ctx: _Context, subject: str, relation: str) -> dict:
    name = ctx.world.label(subject)
    return {"query": f"{name} {HOP_KEYWORDS[relation]}", "passage_id": ctx.corpus.where[(subject, relation)],
            "entity": name}


def _shortcut(ctx: _Context, facts: list[tuple[str, str]], fact_hop: list[int], hops: list[dict],
              answer: str, answer_hop: int) -> bool:
    """True if one passage spans two hops' facts, or a hop passage names the answer too early."""
    spans: dict[str, set[int]] = {}
    for (subject, relation), hop in zip(facts, fact_hop, strict=True):
        ends = ctx.mentions[ctx.world.label(subject)] & ctx.mentions[ctx.world.label(ctx.world.obj(subject, relation))]
        for pid in ends:
            spans.setdefault(pid, set()).add(hop)
    if any(len(h) > 1 for h in spans.values()):
        return True
    named_by = ctx.mentions.get(answer, set())
    return any(h["passage_id"] in named_by for i, h in enumerate(hops) if i != answer_hop)


def _finish(ctx: _Context, question: str, answer: str, template: str, facts: list[tuple[str, str]],
            fact_hop: list[int], hops: list[dict], answer_hop: int) -> Draft | None:
    world = ctx.world
    if answer.lower() in question.lower() or _shortcut(ctx, facts, fact_hop, hops, answer, answer_hop):
        return None
    record = {
        "question": question, "answers": [answer], "template": template,
        "gold_facts": [[world.label(s), r, world.label(world.obj(s, r))] for s, r in facts],
        "gold_passages": list(dict.fromkeys(h["passage_id"] for h in hops)),
        "hops": hops,
    }
    return Draft(record, frozenset(s for s, _ in facts))


def _chain(ctx: _Context, t: ChainTemplate, start: str, rng: random.Random) -> Draft | None:
    world = ctx.world
    facts, hops, node = [], [], start
    for relation in t.relations:
        if not world.has(node, relation):
            return None
        facts.append((node, relation))
        hops.append(_hop(ctx, node, relation))
        node = world.obj(node, relation)
    question = rng.choice(t.phrasings).format(x=world.label(start))
    n = len(facts)
    return _finish(ctx, question, world.label(node), t.name, facts, list(range(n)), hops, n - 1)


def _comparisons(ctx: _Context, rng: random.Random) -> Iterable[Draft]:
    """One pair per company: a same-region partner, preferably a look-alike sharing its stem."""
    world = ctx.world
    companies = world.of_type("company")
    year = {c.id: int(world.obj(c.id, "founded_year")) for c in companies}
    pairs: set[frozenset[str]] = set()
    for a in companies:
        local = [c for c in companies if c.region == a.region and c.id != a.id and year[c.id] != year[a.id]]
        alike = [c for c in local if c.name.split()[0] == a.name.split()[0]]
        pool = alike if alike and rng.random() < 0.5 else local
        if not pool:
            continue
        b = rng.choice(pool)
        if frozenset((a.id, b.id)) in pairs:
            continue
        pairs.add(frozenset((a.id, b.id)))
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        older = a if year[a.id] < year[b.id] else b
        question = rng.choice(COMPARISON_PHRASINGS).format(a=first.name, b=second.name)
        facts = [(first.id, "founded_year"), (second.id, "founded_year"), (older.id, "founded_by")]
        hops = [_hop(ctx, first.id, "founded_year"), _hop(ctx, second.id, "founded_year")]
        answer = world.label(world.obj(older.id, "founded_by"))
        older_hop = 0 if older is first else 1
        draft = _finish(ctx, question, answer, COMPARISON, facts, [0, 1, older_hop], hops, older_hop)
        if draft is not None:
            yield draft


def balanced_sample(drafts: list[Draft], n: int, rng: random.Random) -> list[Draft]:
    """Up to ``n`` drafts, taken round-robin across templates (each template's drafts shuffled)."""
    groups: dict[str, list[Draft]] = {}
    for d in drafts:
        groups.setdefault(d.record["template"], []).append(d)
    for name in sorted(groups):
        rng.shuffle(groups[name])
    out: list[Draft] = []
    queues = [groups[name] for name in sorted(groups)]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out
