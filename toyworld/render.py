"""Render a world as Wikipedia-like passages ``{"id", "title", "text"}``.

Every entity gets one passage (people get two: a biography and a "later life"
passage) titled with its name. A passage about entity E states only E's own facts
(objects are named, never described), so no single passage answers a multi-hop
question. Each fact is one sentence drawn from several phrasings; sentence order,
back-references (a person's surname) and an optional fact-free filler sentence
vary too, all chosen by ``random.Random(f"render:{seed}")``.

Phrasings suit BM25 hop queries of the form "<name> <keyword>" (see
``toyworld.questions.HOP_KEYWORDS``): a passage names its entity in full in its
title and first sentence, and no template uses a name-kind word (book, film,
press, studio, university...), so the word that tells "Nova Press" from "Nova
Books" is rare in the corpus and outweighs the keyword.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from toyworld.graph import Entity, World

#: phrasings per relation: {s} the subject (full name or back-reference), {o} the object
PHRASES: dict[str, tuple[str, ...]] = {
    "capital": ("The capital of {s} is {o}.", "{o} is the capital of {s}.", "{s} has its capital in {o}."),
    "located_in": ("{s} is located in {o}.", "{s} lies in {o} and is located there.",
                   "{s} is a place located in {o}.", "The location of {s} is {o}."),
    "born_in": ("{s} was born in {o}.", "{s} was born in the city of {o}.",
                "Born in {o}, {s} grew up there.", "{s} was born and raised in {o}."),
    "born_year": ("{s} was born in the year {o}.", "{s} was born in {o}.", "The year {s} was born was {o}."),
    "lives_in": ("{s} lives in {o}.", "{s} now lives in {o}.", "Today {s} lives in {o}.",
                 "{s} has made a home in {o}."),
    "studied_at": ("{s} studied at {o}.", "As a student, {s} studied at {o}.",
                   "{s} studied at {o} for several years."),
    "citizen_of": ("{s} is a citizen of {o}.", "{s} holds citizenship of {o}.", "{s} has the citizenship of {o}."),
    "works_for": ("{s} works for {o}.", "{s} is employed by {o}.", "{s} has a job at {o}."),
    "occupation": ("{s} is {o}.", "{s} works as {o}.", "{s} is known as {o}."),  # {o} has its article
    "founded_by": ("{s} was founded by {o}.", "{o} is the founder of {s}.", "{s} was founded by {o} and grew from there.",
                   "The founder of {s} was {o}."),
    "founded_year": ("{s} was founded in {o}.", "{s} was founded in the year {o}.", "The year {s} was founded was {o}.",
                     "{s} was formally founded in {o}."),
    "headquartered_in": ("{s} is headquartered in {o}.", "{s} has its headquarters in {o}.",
                         "The headquarters of {s} are in {o}.", "{s} keeps its headquarters in {o}."),
    "written_by": ("{s} was written by {o}.", "{s} is a novel written by {o}.", "The author {o} wrote {s}.",
                   "{o} is the author of {s}."),
    "published_by": ("{s} was published by {o}.", "{o} published {s}.", "The publisher of {s} is {o}.",
                     "{s} was released by the publisher {o}."),
    "published_year": ("{s} was published in {o}.", "{s} appeared in {o}.", "{s} came out in {o}."),
    "directed_by": ("{s} was directed by {o}.", "{o} directed {s}.", "The director of {s} is {o}.",
                    "{s} is a movie directed by {o}."),
    "produced_by": ("{s} was produced by {o}.", "{o} produced {s}.", "The company that produced {s} is {o}.",
                    "{s} was produced at {o}."),
    "released_year": ("{s} was released in {o}.", "{s} premiered in {o}.", "{s} came out in {o}."),
}

#: opening sentences per entity type (and company kind); they state no fact
INTROS: dict[str, tuple[str, ...]] = {
    "country": ("{s} is a country.", "{s} is a small country.", "{s} is a nation."),
    "city": ("{s} is a city.", "{s} is a town.", "{s} is an old city."),
    "university": ("{s} is a school.", "{s} is a place of higher learning.", "{s} is an old school."),
    "publisher": ("{s} is a publishing firm.", "{s} is a publisher.", "{s} is a publisher of novels."),
    "studio": ("{s} is a movie company.", "{s} is a company that makes movies.", "{s} is a production company."),
    "firm": ("{s} is a company.", "{s} is a business.", "{s} is an engineering firm."),
    "book": ("{s} is a novel.", "{s} is a work of fiction.", "{s} is a story."),
    "film": ("{s} is a movie.", "{s} is a feature-length movie.", "{s} is a drama for the screen."),
}

#: sentences with no fact, to vary passage length and wording
FILLERS: dict[str, tuple[str, ...]] = {
    "person": ("{s} enjoys walking.", "{s} has given many public talks.", "{s} rarely gives interviews.",
               "{s} is known for a calm manner.", "{s} keeps a large library."),
    "company": ("{s} employs many people.", "{s} has grown steadily.", "{s} is widely known in its trade."),
    "book": ("Critics praised the novel.", "The novel was widely read.", "The story is told in brief chapters."),
    "film": ("Critics praised the movie.", "The movie was a modest success.", "The movie has a large cast."),
    "place": ("It has a busy market.", "It is known for its old churches.", "Many visitors come each spring."),
}

#: the facts each passage of an entity states, by entity type (people: biography, then later life)
LAYOUT: dict[str, tuple[tuple[str, ...], ...]] = {
    "country": (("capital",),),
    "city": (("located_in",),),
    "university": (("located_in", "founded_year"),),
    "company": (("founded_by", "founded_year", "headquartered_in"),),
    "person": (("born_in", "born_year", "studied_at"), ("occupation", "citizen_of", "works_for", "lives_in")),
    "book": (("written_by", "published_by", "published_year"),),
    "film": (("directed_by", "produced_by", "released_year"),),
}


@dataclass
class Corpus:
    """The passages, and which passage states each fact: ``where[(subject id, relation)] = passage id``."""

    passages: list[dict[str, str]]
    where: dict[tuple[str, str], str]


def render_world(world: World) -> Corpus:
    """All passages of ``world`` in entity order (ids ``<entity id>-<k>``)."""
    rng = random.Random(f"render:{world.seed}")
    passages: list[dict[str, str]] = []
    where: dict[tuple[str, str], str] = {}
    for e in world.entities.values():
        for k, layout in enumerate(LAYOUT[e.type]):
            pid = f"{e.id}-{k}"
            relations = tuple(r for r in layout if world.has(e.id, r))  # founders work for no one
            passages.append({"id": pid, "title": e.name, "text": _passage(world, e, k, relations, rng)})
            for r in relations:
                where[(e.id, r)] = pid
    missing = [f for f in world.facts if (f.subject, f.relation) not in where]
    if missing:
        raise ValueError(f"render: no passage states {len(missing)} facts, e.g. {missing[0]}")
    return Corpus(passages, where)


def _refs(e: Entity) -> tuple[str, ...]:
    """Ways to refer back to ``e`` after its first mention."""
    if e.type == "person":
        return (e.name, e.name.split()[-1])  # "Berg": Wikipedia style
    return (e.name,)  # other names are short, and look-alikes share all words but one


def _passage(world: World, e: Entity, k: int, relations: tuple[str, ...], rng: random.Random) -> str:
    facts = [(r, _object_text(world, e, r)) for r in relations]
    rng.shuffle(facts)
    refs = _refs(e)
    sentences: list[str] = []
    intro_key = e.kind if e.type == "company" else e.type
    if k == 0 and intro_key in INTROS:
        sentences.append(rng.choice(INTROS[intro_key]).format(s=e.name))
    for i, (relation, obj) in enumerate(facts):
        # the first fact always names the entity in full; later ones may use a back-reference
        subject = e.name if i == 0 else rng.choice(refs)
        sentence = rng.choice(PHRASES[relation]).format(s=subject, o=obj)
        sentences.append(sentence[0].upper() + sentence[1:])
    filler_key = {"city": "place", "country": "place", "university": "place"}.get(e.type, e.type)
    if rng.random() < 0.5:
        sentences.append(rng.choice(FILLERS[filler_key]).format(s=rng.choice(refs)))
    return " ".join(sentences)


def _object_text(world: World, e: Entity, relation: str) -> str:
    """The object as it appears in a sentence (occupations get their article)."""
    text = world.label(world.obj(e.id, relation))
    if relation == "occupation":
        return ("an " if text[0] in "aeiou" else "a ") + text
    return text
