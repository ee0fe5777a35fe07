"""Per-step training data: examples -> token ids with labels -> padded batches.

ReST fine-tunes on per-step examples: the prompt is the step's input, the completion
the ranker's best sample of that step, and the loss covers the completion only. The
toy world's base models also train here on raw passage text (language modelling,
every token trained). Everything in this module is a pure function of its inputs
(no torch.distributed, no global state), so DeepSpeed ranks can reuse it as is:
``make_batches`` gives each rank its own disjoint share of one shared epoch plan.

Token layout of an SFT example (the engine sees the same prompt tokens at inference:
bos, then the prompt tokenized on its own, then it generates)::

    input_ids: bos  p1 p2 ... pn  c1 c2 ... cm      (cm ends the "\\n" stop string)
    labels:    -100 -100 ...  -100 c1 c2 ... cm
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: label value that the loss skips (the convention of torch's cross_entropy)
IGNORE = -100


@dataclass(frozen=True)
class SFTExample:
    """One per-step training example: a step's input and the output to learn."""

    prompt: str
    completion: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.completion, str):
            raise ValueError("SFTExample: prompt and completion must be str")
        if not self.completion.endswith("\n") or "\n" in self.completion[:-1]:
            raise ValueError(
                f"SFTExample: completion must be one line ending in its '\\n' stop string, got {self.completion!r:.80}"
            )
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"SFTExample: weight must be a finite number > 0, got {self.weight!r}")


@dataclass(frozen=True)
class LMText:
    """A language-modelling text whose characters in ``no_loss`` spans (start, end) carry no loss.

    The toy world's bases use it to train no guess of a name the text has not shown yet
    (``toyworld.rename.first_mentions``): every name they learn to write is a copy.
    """

    text: str
    no_loss: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Tokenized:
    """A training sequence: token ids, their labels (IGNORE = not trained) and a loss weight."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    weight: float = 1.0

    def __len__(self) -> int:
        return len(self.input_ids)


def _encode(tok, text: str) -> list[int]:
    """Token ids of ``text`` alone, without special tokens (bos is placed by the caller)."""
    return list(tok.encode(text, add_special_tokens=False))


def _bos(tok) -> list[int]:
    """The tokenizer's bos id as a one-element list, or [] when it has none."""
    bos = getattr(tok, "bos_token_id", None)
    return [] if bos is None else [int(bos)]


def tokenize_example(tok, ex: SFTExample, max_len: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels of one SFT example, or None when its completion cannot fit.

    Prompt and completion are tokenized separately so the boundary is exact. A too
    long example loses the start of its prompt (bos stays first); the completion is
    never cut, so an example whose bos + completion exceeds ``max_len`` is skipped.
    """
    if max_len < 2:
        raise ValueError(f"tokenize_example: max_len must be >= 2, got {max_len}")
    bos, completion = _bos(tok), _encode(tok, ex.completion)
    room = max_len - len(bos) - len(completion)
    if room < 0 or not completion:
        return None
    prompt = _encode(tok, ex.prompt)
    prompt = prompt[len(prompt) - room :] if len(prompt) > room else prompt
    input_ids = bos + prompt + completion
    labels = [IGNORE] * (len(bos) + len(prompt)) + completion
    return input_ids, labels


def tokenize_lm(tok, text: str | LMText, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Language-modelling chunks of ``text`` (bos + text + eos), every position trained
    but the tokens that overlap an ``LMText``'s ``no_loss`` spans.

    Consecutive chunks overlap by one token: a chunk's first label is never scored
    (nothing precedes it), so with the overlap every next-token transition of the
    text is trained exactly once.
    """
    if max_len < 2:
        raise ValueError(f"tokenize_lm: max_len must be >= 2, got {max_len}")
    spans = text.no_loss if isinstance(text, LMText) else ()
    text = text.text if isinstance(text, LMText) else text
    eos = getattr(tok, "eos_token_id", None)
    bos, tail = _bos(tok), ([] if eos is None else [int(eos)])
    if spans:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        body = list(enc["input_ids"])
        keep = [not any(a < e and s < b for s, e in spans) for a, b in enc["offset_mapping"]]
    else:
        body, keep = _encode(tok, text), None
    ids = bos + body + tail
    labels = list(ids) if keep is None else bos + [t if k else IGNORE for t, k in zip(body, keep, strict=True)] + tail
    chunks = []
    for start in range(0, max(len(ids) - 1, 1), max_len - 1):
        chunk = ids[start : start + max_len]
        if len(chunk) >= 2:
            chunks.append((chunk, labels[start : start + max_len]))
    return chunks


def tokenize_all(tok, examples: Iterable[SFTExample | LMText | str], max_len: int) -> tuple[list[Tokenized], int]:
    """Tokenize a mix of SFT examples and raw LM texts; returns (sequences, n_skipped)."""
    out: list[Tokenized] = []
    skipped = 0
    for i, ex in enumerate(examples):
        if isinstance(ex, SFTExample):
            pair = tokenize_example(tok, ex, max_len)
            if pair is None:
                skipped += 1
            else:
                out.append(Tokenized(tuple(pair[0]), tuple(pair[1]), float(ex.weight)))
        elif isinstance(ex, (str, LMText)):
            out.extend(Tokenized(tuple(a), tuple(b)) for a, b in tokenize_lm(tok, ex, max_len)
                       if any(x != IGNORE for x in b[1:]))
        else:
            raise TypeError(f"tokenize_all: example {i} is a {type(ex).__name__}, expected SFTExample, LMText "
                            "or str")
    return out, skipped


def collate(batch: Sequence[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels (IGNORE on padding), weights."""
    if not batch:
        raise ValueError("collate: empty batch")
    width = max(len(t) for t in batch)
    ids = torch.full((len(batch), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, t in enumerate(batch):
        n = len(t)
        ids[row, :n] = torch.tensor(t.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(t.labels, dtype=torch.long)
        mask[row, :n] = 1
    weights = torch.tensor([t.weight for t in batch], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def make_batches(
    items: Sequence[Tokenized] | Sequence[int],
    *,
    batch_size: int | None = None,
    batch_tokens: int | None = None,
    shuffle_seed: int | Sequence[int] = 0,
    rank: int = 0,
    world_size: int = 1,
    group_batches: int = 50,
) -> list[list[int]]:
    """One epoch's batches (lists of indices into ``items``) for ``rank`` of ``world_size``.

    Size a batch by ``batch_size`` sequences or by ``batch_tokens`` padded tokens
    (rows x longest row), exactly one of them. To limit padding, the shuffled epoch is
    cut into windows of ``group_batches`` global batches, each window is sorted by
    length and cut into global batches (one batch per rank), and the global batches
    are shuffled; ``group_batches=1`` is plain random batching. Every rank computes the
    same plan from the same seed and takes its share of each global batch, so ranks
    run the same number of steps on disjoint examples that together cover the epoch
    exactly once. A last global batch too small to give every rank a sequence joins
    the one before it (a rank batch may then exceed its size by one short sequence).
    """
    lengths = [x if isinstance(x, int) else len(x) for x in items]
    if (batch_size is None) == (batch_tokens is None):
        raise ValueError("make_batches: give exactly one of batch_size or batch_tokens")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"make_batches: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
        )
    if len(lengths) < world_size:
        raise ValueError(f"make_batches: {len(lengths)} sequences cannot feed {world_size} ranks")
    if group_batches < 1:
        raise ValueError(f"make_batches: group_batches must be >= 1, got {group_batches}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"make_batches: batch_size must be >= 1, got {batch_size}")
    if batch_tokens is not None and lengths and batch_tokens < max(lengths):
        raise ValueError(
            f"make_batches: batch_tokens={batch_tokens} is below the longest sequence ({max(lengths)})"
        )
    if not lengths:
        return []

    rng = np.random.default_rng(shuffle_seed)
    order = rng.permutation(len(lengths)).tolist()
    if batch_size is not None:
        per_global = batch_size * world_size
    else:
        per_global = world_size * max(1, batch_tokens // max(1, round(float(np.mean(lengths)))))
    window = group_batches * per_global

    groups: list[list[int]] = []
    for start in range(0, len(order), window):
        ranked = sorted(order[start : start + window], key=lambda i: -lengths[i])
        at = 0
        while at < len(ranked):
            take = (
                per_global if batch_size is not None else world_size * (batch_tokens // lengths[ranked[at]])
            )
            group = ranked[at : at + take]
            at += take
            if len(group) < world_size and groups:
                groups[-1].extend(group)
            else:
                groups.append(group)
    groups = [groups[i] for i in rng.permutation(len(groups)).tolist()]
    return [group[rank::world_size] for group in groups]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the padded batch tensors that is padding (0 = none wasted)."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 0.0 if padded == 0 else 1.0 - real / padded


def micro_batches(batch: Sequence[int], lengths: Sequence[int], count: int) -> list[list[int]]:
    """Split one rank's batch (indices into ``lengths``) into ``count`` length-bucketed micro-batches.

    Gradient accumulation runs ``count`` forward/backward passes per optimizer step on
    every rank (DeepSpeed steps the optimizer on every ``count``-th), so the split always
    has exactly ``count`` parts. The batch is sorted longest first (ties by index, so the
    split is a pure function of the plan and thus of the seed) and cut into contiguous
    parts as equal in size as possible: each micro-batch holds sequences of similar
    length and pads little. A batch smaller than ``count`` leaves trailing parts empty.
    """
    if count < 1:
        raise ValueError(f"micro_batches: count must be >= 1, got {count}")
    ranked = sorted(batch, key=lambda i: (-lengths[i], i))
    base, extra = divmod(len(ranked), count)
    out, at = [], 0
    for part in range(count):
        size = base + (part < extra)
        out.append(ranked[at : at + size])
        at += size
    return out


def target_weight(seq: Tokenized) -> float:
    """The weight ``sft_loss`` gives ``seq``: its loss weight times its labelled next-token targets."""
    return seq.weight * sum(1 for label in seq.labels[1:] if label != IGNORE)
