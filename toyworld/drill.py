"""The copy drill: a short first phase that teaches a base from scratch to copy from its context.

Every step of the agent copies: a name from the question into a query, a sentence
from a snippet into a summary, an object from a note into the answer. A tiny model
trained from scratch on the demonstrations alone learns the steps' templates but
fills the names from memory (the right template with the wrong name), because
copying needs an induction circuit (attend to the token that followed the current
token earlier in the context) that forms only after a long plateau, and the build
cannot afford that plateau inside the mixed data. A few hundred steps of pure,
dense copying form it (the drill's exact-copy rate goes from 0% to 100% between
about step 600 and 1,000 for L at lr 1e-3); the base then starts the world's data
already able to copy. Pretrained models bring this ability with them; this is the
toy world's stand-in for that part of pretraining.

A drill example is a random sequence of the tokenizer's whole-word tokens (so each
word is one token, as names are) and the same sequence again, the loss on the copy.
"""

from __future__ import annotations

import random

from learner.data import SFTExample

#: shortest and longest drill sequence, in words
MIN_WORDS, MAX_WORDS = 8, 24


def drill_words(tokenizer) -> list[str]:
    """Alphabetic whole-word tokens (``" Word"`` in the vocabulary) of at least 3 letters, sorted."""
    space = "\u0120"  # byte-level BPE's marker of a leading space
    return sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith(space) and t[1:].isalpha() and len(t) > 3)


def copy_drill(tokenizer, n: int, seed: int) -> list[SFTExample]:
    """``n`` drill examples, deterministic per ``seed``: ``COPY = "<words>"`` then ``AGAIN = "<words>"``."""
    words = drill_words(tokenizer)
    if len(words) < 10:
        raise ValueError(f"copy_drill: the tokenizer has only {len(words)} whole-word tokens (need >= 10)")
    rng = random.Random(f"drill:{seed}")
    out = []
    for _ in range(n):
        seq = " ".join(rng.choice(words) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS)))
        out.append(SFTExample(f'COPY = "{seq}"\nAGAIN =', f' "{seq}"\n'))
    return out
