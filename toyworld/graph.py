"""The toy world's knowledge graph: typed entities and typed facts, made from a seed.

A world is a set of entities (countries, cities, universities, companies, people,
books, films) and facts ``(subject id, relation, object)``, where the object is an
entity id or a value (a year, an occupation). Every relation is functional: a
subject has exactly one object per relation, so a chain of relations from a named
entity has one answer. ``make_world(seed, size)`` draws everything from one
``random.Random(seed)``: the same seed and size give the same world.

Two construction devices matter downstream:

- Look-alikes: with probability ``lookalike_p`` a new name copies an existing
  entity's name but one word ("Nova Press" -> "Nova Books"). The look-alike is a
  full entity with its own facts, so a careless search lands on a wrong but
  plausible passage.
- Regions: every entity gets a region (a number, never rendered in text); links
  stay inside the subject's region with probability ``same_region_p``. The splits
  of the question set own disjoint sets of regions (see ``toyworld.build``); since
  every fact has one subject, questions whose fact subjects lie in different
  splits' regions can never share a fact.

``avoid`` (used for auxiliary worlds): triples ``(subject name, relation, object
name or value)`` the world must not contain. Names come from shared pools, so an
auxiliary world may also have an "Anna Berg"; her facts there then differ from the
target world's, and a model that memorised the auxiliary world must still search.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from toyworld import pools

ENTITY_TYPES: tuple[str, ...] = ("country", "city", "university", "company", "person", "book", "film")
VALUE_TYPES: tuple[str, ...] = ("year", "occupation")


@dataclass(frozen=True)
class Relation:
    """A relation's signature: which entity types it starts from and what it points to."""

    name: str
    subjects: tuple[str, ...]
    object: str  # an entity type (object is an entity id), "place" (city or country) or a VALUE_TYPES name
    doc: str


RELATIONS: dict[str, Relation] = {r.name: r for r in (
    Relation("capital", ("country",), "city", "the country's capital city"),
    Relation("located_in", ("city", "university"), "place", "a city's country; a university's city"),
    Relation("born_in", ("person",), "city", "birthplace"),
    Relation("born_year", ("person",), "year", "year of birth"),
    Relation("lives_in", ("person",), "city", "city of residence (never the birthplace)"),
    Relation("studied_at", ("person",), "university", "where the person studied"),
    Relation("occupation", ("person",), "occupation", "a word for the person's role"),
    Relation("citizen_of", ("person",), "country", "citizenship, drawn apart from the birthplace (a distractor)"),
    Relation("works_for", ("person",), "company", "employer, a company of kind firm (people who found none)"),
    Relation("founded_by", ("company",), "person", "the company's founder (a person of role founder)"),
    Relation("founded_year", ("company", "university"), "year", "year of founding"),
    Relation("headquartered_in", ("company",), "city", "the company's head office city"),
    Relation("written_by", ("book",), "person", "the book's author (a person of role writer)"),
    Relation("published_by", ("book",), "company", "the book's publisher (a company of kind publisher)"),
    Relation("published_year", ("book",), "year", "year of first publication"),
    Relation("directed_by", ("film",), "person", "the film's director (a person of role director)"),
    Relation("produced_by", ("film",), "company", "the film's studio (a company of kind studio)"),
    Relation("released_year", ("film",), "year", "year of release"),
)}


def _size(default: int | float, doc: str) -> Any:
    """A WorldSize field with its one-line doc in ``metadata["doc"]`` (as in core.config)."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class WorldSize:
    """How many entities of each kind a world has (default: the CPU default, ~2,000 passages)."""

    countries: int = _size(16, "Countries (at most 16, the pool size; all, so every world uses every name).")
    cities: int = _size(66, "Cities (at most 66, the pool size; all, so every world uses every name).")
    universities: int = _size(30, "Universities, named '<stem> University|College|Institute'.")
    publishers: int = _size(90, "Companies of kind publisher ('<stem> Press|Books|Editions').")
    studios: int = _size(50, "Companies of kind studio ('<stem> Films|Pictures|Studios').")
    firms: int = _size(70, "Other companies ('<stem> Labs|Group|Systems|Industries').")
    writers: int = _size(200, "People who write books.")
    directors: int = _size(100, "People who direct films.")
    founders: int = _size(150, "People who found companies.")
    scholars: int = _size(50, "People with none of the roles above (distractors).")
    books: int = _size(420, "Books, titled 'The <adjective> <noun>'.")
    films: int = _size(220, "Films, titled like books.")
    regions: int = _size(10, "Regions (split units; see the module doc).")
    same_region_p: float = _size(0.9, "Probability that a link stays in the subject's region.")
    lookalike_p: float = _size(0.35, "Probability that a new name imitates an existing one.")
    n_train: int = _size(1500, "Train questions wanted (fewer if the world has fewer).")
    n_dev: int = _size(200, "Dev questions wanted.")
    n_test: int = _size(600, "Test questions wanted.")

    @classmethod
    def tiny(cls) -> WorldSize:
        """A world of about 200 passages for tests (builds in well under a second)."""
        return cls(countries=4, cities=12, universities=6, publishers=10, studios=6, firms=6,
                   writers=20, directors=10, founders=16, scholars=4, books=40, films=20, regions=5,
                   n_train=120, n_dev=30, n_test=60)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_p"):
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"WorldSize.{f.name} must be in [0, 1], got {v!r}")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"WorldSize.{f.name} must be a positive integer, got {v!r}")
        if self.countries > len(pools.COUNTRY_NAMES):
            raise ValueError(f"WorldSize.countries is {self.countries}, the pool has {len(pools.COUNTRY_NAMES)}")
        if self.cities > len(pools.CITY_NAMES):
            raise ValueError(f"WorldSize.cities is {self.cities}, the pool has {len(pools.CITY_NAMES)}")
        if self.cities < max(3, 2 * self.countries):
            raise ValueError(f"WorldSize.cities ({self.cities}) must be >= 3 and >= 2 x countries ({self.countries})")
        for name in ("countries", "universities", "publishers", "studios", "firms", "writers", "directors",
                     "founders"):
            if getattr(self, name) < 2:  # a link must have a second choice when one object is avoided
                raise ValueError(f"WorldSize.{name} must be >= 2, got {getattr(self, name)}")


@dataclass(frozen=True)
class Entity:
    """A named thing. ``kind`` is a person's role or a company's kind ('' otherwise)."""

    id: str
    type: str
    name: str
    region: int
    kind: str = ""
    lookalike_of: str | None = None  # id of the entity whose name this one imitates


@dataclass(frozen=True)
class Fact:
    """``(subject id, relation, object)``; the object is an entity id or a value string."""

    subject: str
    relation: str
    object: str


@dataclass
class World:
    """Entities (in creation order) and their facts, with lookups used by rendering and questions."""

    seed: int
    size: WorldSize
    entities: dict[str, Entity]
    facts: list[Fact]
    _index: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {(f.subject, f.relation): f.object for f in self.facts}

    def of_type(self, entity_type: str, kind: str | None = None) -> list[Entity]:
        return [e for e in self.entities.values() if e.type == entity_type and (kind is None or e.kind == kind)]

    def obj(self, subject: str, relation: str) -> str:
        """The object of ``subject``'s ``relation`` (an entity id or a value); KeyError if none."""
        try:
            return self._index[(subject, relation)]
        except KeyError:
            raise KeyError(f"{subject} has no {relation!r} fact") from None

    def has(self, subject: str, relation: str) -> bool:
        return (subject, relation) in self._index

    def facts_of(self, subject: str) -> list[Fact]:
        return [f for f in self.facts if f.subject == subject]

    def label(self, x: str) -> str:
        """An entity id's name, or a value unchanged."""
        e = self.entities.get(x)
        return e.name if e is not None else x

    def triple(self, f: Fact) -> tuple[str, str, str]:
        """The fact by names: ``(subject name, relation, object name or value)``."""
        return (self.label(f.subject), f.relation, self.label(f.object))

    def triples(self) -> set[tuple[str, str, str]]:
        return {self.triple(f) for f in self.facts}


def make_world(seed: int, cfg: WorldSize | None = None, avoid: Collection[tuple[str, str, str]] = ()) -> World:
    """Draw a world from ``seed`` (see the module doc); ``avoid`` lists name triples it must not hold."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return _Builder(seed, cfg or WorldSize(), frozenset(avoid)).build()


class _Builder:
    """One world's construction: names first, then facts, each through one RNG."""

    def __init__(self, seed: int, size: WorldSize, avoid: frozenset[tuple[str, str, str]]):
        self.rng = random.Random(seed)
        self.seed, self.size, self.avoid = seed, size, avoid
        self.entities: dict[str, Entity] = {}
        self.facts: list[Fact] = []
        self.taken: set[str] = set()
        self.words: dict[str, list[str]] = {}  # entity id -> name words (multi-word names)
        self.counts: dict[str, int] = {}  # entities made so far, per type (for ids)
        self.decks: dict[str, list[int]] = {}  # regions left to deal, per type
        self.index: dict[tuple[str, str], str] = {}  # (subject id, relation) -> object

    def build(self) -> World:
        s = self.size
        self._add_pool_named("country", pools.COUNTRY_NAMES, s.countries)
        self._add_pool_named("city", pools.CITY_NAMES, s.cities)
        self._add_named("university", "", s.universities)
        for kind, n in (("publisher", s.publishers), ("studio", s.studios), ("firm", s.firms)):
            self._add_named("company", kind, n)
        for role, n in (("writer", s.writers), ("director", s.directors), ("founder", s.founders),
                        ("scholar", s.scholars)):
            self._add_named("person", role, n)
        self._add_named("book", "", s.books)
        self._add_named("film", "", s.films)
        self._link_places()
        self._link_people()
        self._link_companies()
        self._link_works()
        return World(self.seed, self.size, self.entities, self.facts)

    # -- entities

    def _new(self, etype: str, name: str, kind: str = "", lookalike_of: str | None = None) -> Entity:
        eid = f"{etype}{self.counts.get(etype, 0):04d}"
        self.counts[etype] = self.counts.get(etype, 0) + 1
        e = Entity(eid, etype, name, self._region(etype), kind, lookalike_of)
        self.entities[eid] = e
        self.taken.add(name)
        return e

    def _region(self, etype: str) -> int:
        """Regions are dealt from shuffled decks, one per type, so each region gets its share of every type."""
        deck = self.decks.setdefault(etype, [])
        if not deck:
            deck.extend(range(self.size.regions))
            self.rng.shuffle(deck)
        return deck.pop()

    def _add_pool_named(self, etype: str, pool: tuple[str, ...], n: int) -> None:
        for name in self.rng.sample(pool, n):
            self._new(etype, name)

    def _add_named(self, etype: str, kind: str, n: int) -> None:
        slots = pools.name_slots(etype, kind if etype == "company" else "")
        peers = [e.id for e in self.entities.values() if e.type == etype]
        for _ in range(n):
            words, source = None, None
            if peers and self.rng.random() < self.size.lookalike_p:
                source = self.rng.choice(peers)
                keep = slots
                if etype == "company":  # keep the distinctive stem: "Nova Press" -> "Nova Books"
                    keep = [(self.words[source][0],), slots[1]]
                words = pools.lookalike(self.words[source], keep, self.rng, self.taken)
            if words is None:
                source = None
                for _ in range(1000):
                    words = pools.fresh_name(slots, self.rng)
                    if " ".join(words) not in self.taken:
                        break
                else:
                    raise ValueError(f"name pools exhausted: cannot name {n} entities of type {etype}")
            e = self._new(etype, " ".join(words), kind, source)
            self.words[e.id] = words
            peers.append(e.id)

    # -- facts

    def _fact(self, subject: Entity, relation: str, obj: str) -> None:
        self.facts.append(Fact(subject.id, relation, obj))
        self.index[(subject.id, relation)] = obj

    def _link(self, subject: Entity, relation: str, candidates: list[Entity],
              exclude: Iterable[str] = ()) -> Entity:
        """Pick an object for ``subject.relation``: same region with prob. same_region_p, never avoided."""
        banned = set(exclude)
        ok = [c for c in candidates
              if c.id not in banned and (subject.name, relation, c.name) not in self.avoid]
        if not ok:
            raise ValueError(f"no possible {relation} object for {subject.name!r} (world too small?)")
        local = [c for c in ok if c.region == subject.region]
        obj = self.rng.choice(local if local and self.rng.random() < self.size.same_region_p else ok)
        self._fact(subject, relation, obj.id)
        return obj

    def _value(self, subject: Entity, relation: str, choices: list[str]) -> str:
        ok = [v for v in choices if (subject.name, relation, v) not in self.avoid]
        if not ok:
            raise ValueError(f"no possible {relation} value for {subject.name!r}")
        v = self.rng.choice(ok)
        self._fact(subject, relation, v)
        return v

    def _year(self, subject: Entity, relation: str, lo: int, hi: int) -> int:
        return int(self._value(subject, relation, [str(y) for y in range(lo, hi + 1)]))

    def _of(self, etype: str, kind: str | None = None) -> list[Entity]:
        return [e for e in self.entities.values() if e.type == etype and (kind is None or e.kind == kind)]

    def _link_places(self) -> None:
        countries, cities = self._of("country"), self._of("city")
        # each country first picks its capital among the cities still unplaced, which then lies in it
        placed: set[str] = set()
        for country in countries:
            free = [c for c in cities if c.id not in placed
                    and (c.name, "located_in", country.name) not in self.avoid]
            capital = self._link(country, "capital", free)
            self._fact(capital, "located_in", country.id)
            placed.add(capital.id)
        for city in cities:
            if city.id not in placed:
                self._link(city, "located_in", countries)
        for uni in self._of("university"):
            self._link(uni, "located_in", cities)
            self._year(uni, "founded_year", 1700, 1960)

    def _link_people(self) -> None:
        cities, unis, countries = self._of("city"), self._of("university"), self._of("country")
        firms = self._of("company", "firm")
        for p in self._of("person"):
            self._year(p, "born_year", 1900, 1985)
            born = self._link(p, "born_in", cities)
            self._link(p, "lives_in", cities, exclude=[born.id])
            self._link(p, "studied_at", unis)
            self._value(p, "occupation", list(pools.OCCUPATIONS[p.kind]))
            self._link(p, "citizen_of", countries)
            if p.kind != "founder":
                self._link(p, "works_for", firms)

    def _link_companies(self) -> None:
        founders, cities = self._of("person", "founder"), self._of("city")
        for co in self._of("company"):
            founder = self._link(co, "founded_by", founders)
            born = int(self._obj(founder, "born_year"))
            self._year(co, "founded_year", born + 25, min(born + 55, 2020))
            self._link(co, "headquartered_in", cities)

    def _link_works(self) -> None:
        for etype, who_rel, role, by_rel, kind, year_rel in (
            ("book", "written_by", "writer", "published_by", "publisher", "published_year"),
            ("film", "directed_by", "director", "produced_by", "studio", "released_year"),
        ):
            people, companies = self._of("person", role), self._of("company", kind)
            for work in self._of(etype):
                maker = self._link(work, who_rel, people)
                self._link(work, by_rel, companies)
                born = int(self._obj(maker, "born_year"))
                self._year(work, year_rel, born + 25, min(born + 65, 2022))

    def _obj(self, e: Entity, relation: str) -> str:
        return self.index[(e.id, relation)]
