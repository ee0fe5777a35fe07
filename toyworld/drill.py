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

A copy example is a random sequence of the tokenizer's whole-word tokens (so each
word is one token, as names are) and the same sequence again, the loss on the copy.
A find example is the summarize step's copying in miniature: a text of random-word
sentences, two words of one of them, and that whole sentence copied back. Copying
alone forms the circuit; finding the sentence to copy is what a note needs, and a
base drilled only on copying paraphrases the world's sentences instead, filling
first names from memory.
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


def find_drill(tokenizer, n: int, seed: int) -> list[SFTExample]:
    """``n`` find examples, deterministic per ``seed``: ``TEXT = "<sentences>"``, ``FIND = "<two words>"``,
    then ``FOUND = "<the one sentence holding both>"``."""
    words = drill_words(tokenizer)
    if len(words) < 10:
        raise ValueError(f"find_drill: the tokenizer has only {len(words)} whole-word tokens (need >= 10)")
    rng = random.Random(f"find:{seed}")
    out: list[SFTExample] = []
    while len(out) < n:
        sentences = [[rng.choice(words) for _ in range(rng.randint(4, 9))] for _ in range(rng.randint(2, 5))]
        target = rng.randrange(len(sentences))
        key = rng.sample(sentences[target], 2)
        others = [set(s) for i, s in enumerate(sentences) if i != target]
        if any(set(key) <= o for o in others):  # the pair must name one sentence
            continue
        text = " ".join(" ".join(s) + "." for s in sentences)
        out.append(SFTExample(f'TEXT = "{text}"\nFIND = "{" ".join(key)}"\nFOUND =',
                              f' "{" ".join(sentences[target])}."\n'))
    return out


def drill_examples(tokenizer, n: int, seed: int, find_share: float = 0.0) -> list[SFTExample]:
    """``n`` drill examples: copy examples, ``find_share`` of them find examples instead."""
    n_find = round(find_share * n)
    return copy_drill(tokenizer, n - n_find, seed) + find_drill(tokenizer, n_find, seed)


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
