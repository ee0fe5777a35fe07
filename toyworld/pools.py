"""Shared word pools for toy-world names, and look-alike name construction.

Why pools: tiny models trained from scratch cannot copy invented names that a BPE
splits into several pieces (DESIGN section 5: 0-4% accuracy). Every name here is
built from short, common English-like words drawn from fixed pools shared by the
target world and the auxiliary worlds, so each word is frequent in the corpus a
2,048-token BPE is trained on and stays one token, and the base models (trained on
auxiliary worlds) have already learned every word the target world uses.

Pools are disjoint from one another (a city word is never a surname or a title
word), so an answer never hides inside another kind of name. ``check_pools`` verifies
this at import time.

Look-alikes: a distractor shares one word with a real name ("Nova Press" vs "Nova
Books", "Anna Berg" vs "Anna Lund"), so a careless query lands on the wrong entity.
The name-kind words (Press, Films, University...) appear nowhere in the passage
templates (``toyworld.render``), so for BM25 they are rare and tell a name from its
look-alike.
"""

from __future__ import annotations

import random
from collections.abc import Collection

FIRST_NAMES: tuple[str, ...] = tuple("""
Anna Ben Carl Dan Eva Finn Gus Hugo Ida Jack Kate Leo Mia Nina Otto Paul Rosa Sam Tom Vera
Alice Bruno Clara Diana Emil Frank Greta Hans Iris Jonas Karl Lena Marco Nora Oscar Peter
Rita Sofia Theo Ulla Victor Wanda Adam Bella Colin Daisy Edgar Fiona George Helen Ivan Julia
Kevin Laura Martin Nadia Olga Philip Ruth Simon Tina Walter Amy Boris Celia David Ella Felix
Grace Henry Irene James Lucy Max Nick Rose Sara Tessa Will Zoe
""".split())

LAST_NAMES: tuple[str, ...] = tuple("""
Berg Lund Holm Dahl Strand Moss Frost Wood Hill Stone Brook Field Marsh Reed Lane Hale Cole
Mills Barker Fox Hart Gray Black White Fuller Brown Short Sawyer Young Price King Page Ward Knight
Chandler Fisher Baker Carter Mason Turner Walker Parker Cooper Porter Archer Miller Taylor Bishop
Morgan Harper Shaw Rowe Rhodes Nash Quinn Dean Blake Grant Hayes Ford Webb Lowe Banks Burns
Dale Ellis Foster Gibbs Hodge Keller Lang Meyer Tanner Olsen Pratt Roth Sandberg Vogel Weber
Kramer Becker Hansen Larsen Nilsen Jensen Moore Hughes Lloyd Doyle Flynn Kelly Walsh Byrne
Brady Casey Duffy Egan Grady Hogan Keane Lynch Nolan Ryan Sharp Swift Wolf Crane Hawk Finch
Drake Swan Lamb Hare Bird Sparrow Wren Robin Steel Gold Silver
""".split())

COMPANY_STEMS: tuple[str, ...] = tuple("""
Nova Orion Apex Vista Summit Atlas Titan Delta Alpha Echo Pulse Prism Amber Ember Blaze Spark
Flame Torch Beacon Lantern Comet Galaxy Polar Arctic Glacier Canyon Prairie Meadow Orchard Grove
Willow Cedar Maple Birch Aspen Pine Laurel Ivy Fern Clover Acorn Harbor Anchor Compass Sail Helm
Voyage Quest Venture Frontier Pioneer Horizon Dawn Dusk Aurora Thunder Storm Breeze Gale Rapids
Tide Coral Reef Pearl Shell Marble Granite Slate Iron Copper Bronze Falcon Eagle Raven Heron
Panther Bison Stag Otter Badger Beaver Dolphin Whale Phoenix Dragon Guardian Ranger Liberty Unity
Harmony Fusion Logic Signal Circuit Pixel Quantum Orbit Wave Ridge Peak Tower Bridge Arch Gate
Portal Pillar Shield Banner Royal Rocket Jet Meridian Cosmos Lunar Solar Zenith Vector Cobalt
Crystal Velvet
""".split())

COMPANY_SUFFIXES: dict[str, tuple[str, ...]] = {
    "publisher": ("Press", "Books", "Editions"),
    "studio": ("Films", "Pictures", "Studios"),
    "firm": ("Labs", "Group", "Systems", "Industries"),
}

UNIVERSITY_STEMS: tuple[str, ...] = tuple("""
Oakwood Elmhurst Ashbury Fairview Greenfield Highland Lakeside Riverside Westbrook Eastwood
Northgate Southport Kingsley Queensbury Hillcrest Stonebridge Redwood Silverton Goldcrest
Bayview Clearwater Millbrook Cliffside Woodland Brightwater Stanhope Thornbury Whitmore
Blackwood Cresthaven
""".split())

UNIVERSITY_KINDS: tuple[str, ...] = ("University", "College", "Institute")

CITY_NAMES: tuple[str, ...] = tuple("""
Ashford Bexley Camden Dorset Elton Fenwick Glenmore Harlow Ilford Jarrow Kendal Ludlow Marlow
Newbury Oakham Penrith Quarry Redruth Selby Thirsk Upton Ventnor Whitby Yarmouth Alnwick
Barnet Carlow Dundee Exeter Falmouth Gosport Hexham Ipswich Kelso Leyton Morley Nairn Otley
Perth Ripon Sutton Tring Ulverston Wigan Alston Bolton Corby Derby Epsom Frome Goole Hythe
Keswick Louth Malton Neath Oundle Poole Rugby Stroud Totnes Wells Yeovil Buxton Crewe Dover
""".split())

COUNTRY_NAMES: tuple[str, ...] = tuple("""
Norland Westmark Ostria Valdor Kessia Lumeria Tarvia Belmora Corvia Daresia Eskaria Fennia
Galdor Hestia Iskar Jorvia
""".split())

TITLE_ADJECTIVES: tuple[str, ...] = tuple("""
Silent Hidden Broken Golden Distant Bitter Endless Frozen Burning Quiet Lonely Secret Fallen
Crooked Wild Empty Narrow Hollow Last First Little Long Dark Bright Cold Warm Lost Open Deep
Pale Red Blue Green Sleeping Wandering Forgotten Shining Restless Gentle Strange
""".split())

TITLE_NOUNS: tuple[str, ...] = tuple("""
River Garden Mountain Winter Summer Harvest Lake Forest Island Road Door Window Mirror Letter
Promise Voice Shadow Light Night Morning Evening Season Journey Kingdom Castle Village Valley
Ocean Sea Desert Shore Sky Moon Sun Star Fire Rain Snow Wind Song Dream Heart Hand Eye Crown
Sword Key Clock Bell Ship Train House Room Hour Feather Child Stranger Hunter Sailor Painter
""".split())

#: the pools a name's distinctive words come from (kind words such as Press or University aside)
NAME_POOLS: dict[str, tuple[str, ...]] = {
    "FIRST_NAMES": FIRST_NAMES, "LAST_NAMES": LAST_NAMES, "COMPANY_STEMS": COMPANY_STEMS,
    "UNIVERSITY_STEMS": UNIVERSITY_STEMS, "CITY_NAMES": CITY_NAMES, "COUNTRY_NAMES": COUNTRY_NAMES,
    "TITLE_ADJECTIVES": TITLE_ADJECTIVES, "TITLE_NOUNS": TITLE_NOUNS,
}

OCCUPATIONS: dict[str, tuple[str, ...]] = {
    "writer": ("novelist", "poet", "writer", "author"),
    "director": ("movie director", "filmmaker", "director"),
    "founder": ("entrepreneur", "businessperson", "industrialist"),
    "scholar": ("historian", "chemist", "economist", "physicist"),
}


def name_words() -> tuple[str, ...]:
    """Every word a name can contain (for the tokenizer: each should end up one token)."""
    pools = (FIRST_NAMES, LAST_NAMES, COMPANY_STEMS, *COMPANY_SUFFIXES.values(), UNIVERSITY_STEMS,
             UNIVERSITY_KINDS, CITY_NAMES, COUNTRY_NAMES, ("The",), TITLE_ADJECTIVES, TITLE_NOUNS)
    return tuple(dict.fromkeys(w for pool in pools for w in pool))


def check_pools() -> None:
    """Raise ``ValueError`` if a name word appears in two pools (answers must not hide in names)."""
    pools = {
        **NAME_POOLS,
        "suffixes": tuple(s for v in COMPANY_SUFFIXES.values() for s in v) + UNIVERSITY_KINDS,
    }
    owner: dict[str, str] = {}
    for pool_name, words in pools.items():
        if len(set(words)) != len(words):
            raise ValueError(f"pool {pool_name} lists a word twice")
        for w in set(words):
            if not w.isalpha():
                raise ValueError(f"pool {pool_name}: word {w!r} is not a single alphabetic word")
            if w.lower() in owner:
                raise ValueError(f"word {w!r} is in both {owner[w.lower()]} and {pool_name}")
            owner[w.lower()] = pool_name


check_pools()


# -- names: a name is a list of words, one per slot; the entity's name is " ".join(words)

#: the fixed first word of book and film titles
_THE: tuple[str, ...] = ("The",)


def name_slots(entity_type: str, kind: str = "") -> list[tuple[str, ...]]:
    """The pool each word of a name of this entity type (and company kind) is drawn from."""
    if entity_type == "person":
        return [FIRST_NAMES, LAST_NAMES]
    if entity_type == "company":
        if kind not in COMPANY_SUFFIXES:
            raise ValueError(f"unknown company kind {kind!r} (known: {', '.join(COMPANY_SUFFIXES)})")
        return [COMPANY_STEMS, COMPANY_SUFFIXES[kind]]
    if entity_type == "university":
        return [UNIVERSITY_STEMS, UNIVERSITY_KINDS]
    if entity_type in ("book", "film"):
        return [_THE, TITLE_ADJECTIVES, TITLE_NOUNS]
    raise ValueError(f"no multi-word names for entity type {entity_type!r}")


def fresh_name(slots: list[tuple[str, ...]], rng: random.Random) -> list[str]:
    """A name with every word drawn independently from its slot."""
    return [rng.choice(s) for s in slots]


def lookalike(words: list[str], slots: list[tuple[str, ...]], rng: random.Random,
              taken: Collection[str], tries: int = 50) -> list[str] | None:
    """A name that keeps all of ``words`` but one ("Nova Press" -> "Nova Books", "Anna Berg" -> "Anna Lund").

    ``slots[i]`` is the pool the new name's word ``i`` must come from (a 1-word pool
    is a fixed word, like "The" in titles). The changed word is redrawn from its
    slot; the kept words must already fit theirs. Returns ``None`` when no such
    name is free of ``taken`` (the caller then makes a fresh name).
    """
    if len(words) != len(slots):
        raise ValueError(f"name {' '.join(words)!r} has {len(words)} words but {len(slots)} slots were given")
    fits = [w in s for w, s in zip(words, slots, strict=True)]
    free = [i for i, s in enumerate(slots) if len(s) > 1 and all(fits[:i] + fits[i + 1:])]
    if not free:
        return None
    for _ in range(tries):
        i = rng.choice(free)
        new = list(words)
        new[i] = rng.choice(slots[i])
        if new != words and " ".join(new) not in taken:
            return new
    return None
