"""Rename each base-training text on its own, so that no fact can be learned by heart.

The auxiliary worlds draw their names from the same word pools as the target world
(``toyworld.pools``), with other facts. A base trained on them as written learns
those facts: seeing ``written by Philip`` it writes the surname it memorised, not
the one in the snippet, and in the target world that is always wrong. Here every
training text (one step example, or one passage) gets its own random permutation of
every pool's words and its own shift of every year, applied to prompt and
completion alike. Within a text the story stays consistent (the note copies the
snippet, the answer the note); across texts a name means nothing, so the only way
to predict a name is to copy it from the context, which is the skill the target
world needs. Kind words (Press, University...) and templates are left alone, and a
shift applied to every year of a text keeps "founded earlier" comparisons true.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator

from learner.data import SFTExample
from toyworld import pools

#: years are shifted by at most this much (the world's years stay four-digit)
MAX_YEAR_SHIFT = 40

#: name word -> its pool (each word is permuted within its pool: a city stays a city)
_POOL_OF = {w: pool for pool in pools.NAME_POOLS.values() for w in pool}
_TOKEN = re.compile(r"\b([A-Z][a-z]+)\b|\b(1[5-9]\d\d|20\d\d)\b")


class Renamer:
    """Draws one renaming (word permutation per pool + year shift) per call of ``__call__``.

    Only the words a text uses are drawn: a random injective map of those words into
    their pools is what a whole random permutation looks like from inside the text.
    """

    def __init__(self, seed: int):
        self.rng = random.Random(f"rename:{seed}")

    def __call__(self, *texts: str) -> list[str]:
        """``texts`` under one fresh renaming (the same one for all of them)."""
        mapping: dict[str, str] = {}
        taken: set[str] = set()
        shift = self.rng.randint(-MAX_YEAR_SHIFT, MAX_YEAR_SHIFT)

        def sub(m: re.Match) -> str:
            if m.group(2):
                return str(int(m.group(2)) + shift)
            word = m.group(1)
            pool = _POOL_OF.get(word)
            if pool is None:
                return word
            if word not in mapping:
                new = self.rng.choice(pool)
                while new in taken:
                    new = self.rng.choice(pool)
                mapping[word] = new
                taken.add(new)
            return mapping[word]

        return [_TOKEN.sub(sub, t) for t in texts]


def name_words_in(text: str) -> list[str]:
    """The pool words and years of ``text``, in order: what a renaming changes, what a step must copy."""
    return [m.group(0) for m in _TOKEN.finditer(text) if m.group(2) or m.group(1) in _POOL_OF]


def first_mentions(text: str) -> tuple[tuple[int, int], ...]:
    """Character spans of the name words and years that ``text`` has not shown before them.

    Under renaming such a word cannot be predicted, only guessed from the pools; training
    on it teaches a base to write names from memory. A repeat can be copied.
    """
    seen: set[str] = set()
    spans = []
    for m in _TOKEN.finditer(text):
        word = m.group(0)
        if m.group(2) or m.group(1) in _POOL_OF:
            if word not in seen:
                spans.append(m.span())
            seen.add(word)
    return tuple(spans)


def renamed(examples: Iterable[SFTExample | str], seed: int) -> Iterator[SFTExample | str]:
    """Every example under its own renaming (deterministic per ``seed`` and order)."""
    rename = Renamer(seed)
    for ex in examples:
        if isinstance(ex, SFTExample):
            prompt, completion = rename(ex.prompt, ex.completion)
            yield SFTExample(prompt, completion, ex.weight)
        else:
            yield rename(ex)[0]
