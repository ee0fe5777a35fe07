"""Deterministic answer metrics: SQuAD-style normalisation, exact match, token F1, containment.

These are the "deterministic judge" every eval number states it was produced by.
A prediction of ``None`` (the episode ended without an answer) scores zero on every
metric; a question without gold answers cannot be scored and is a ``ValueError``.
Also here: the Wilson interval used for every accuracy's 95% CI, and mean/std over
seeds.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _strip_punctuation(text: str) -> str:
    # Every Unicode punctuation character, not only ASCII: gold strings carry curly
    # quotes and en dashes that a model may write plainly (and vice versa).
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace (SQuAD)."""
    text = _strip_punctuation(s.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _check_golds(golds: Sequence[str]) -> None:
    if isinstance(golds, str):
        raise TypeError("golds must be a sequence of strings, not one string")
    if not golds:
        raise ValueError("golds is empty: a question needs at least one gold answer to be scored")


def exact_match(pred: str | None, golds: Sequence[str]) -> bool:
    """True when the normalised prediction equals any normalised gold answer."""
    _check_golds(golds)
    if pred is None:
        return False
    p = normalize_answer(pred)
    return any(p == normalize_answer(g) for g in golds)


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:  # SQuAD v2: both empty is a match, one empty is not
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str | None, golds: Sequence[str]) -> float:
    """Bag-of-tokens F1 between the normalised prediction and each gold; the best one."""
    _check_golds(golds)
    if pred is None:
        return 0.0
    p = normalize_answer(pred).split()
    return max(_f1(p, normalize_answer(g).split()) for g in golds)


def contains(pred: str | None, golds: Sequence[str]) -> bool:
    """True when some normalised gold occurs as a whole-token span of the normalised prediction.

    "the river Dask" contains "Dask"; "Daskell" does not. A gold that normalises to
    nothing never counts (an empty span is in every string).
    """
    _check_golds(golds)
    if pred is None:
        return False
    p = normalize_answer(pred).split()
    for gold in golds:
        g = normalize_answer(gold).split()
        if g and any(p[i : i + len(g)] == g for i in range(len(p) - len(g) + 1)):
            return True
    return False


def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (z=1.96: 95%); (0, 1) when n == 0.

    Chosen over the normal approximation because it stays inside [0, 1] and is not
    zero-width at 0% or 100%, which small toy evals hit.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); std is 0.0 for a single value.

    Meant for the same eval over several seeds, where the spread between runs is the
    quantity of interest (hence the unbiased n - 1 form).
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)
