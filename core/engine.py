"""The one interface every inference engine (transformers, vLLM) implements.

The episode runner only ever calls ``generate`` with a whole wave of prompts (one
call per wave, many episodes at once) and the learner's broadcast only ever calls
``load_weights``. Keeping the surface this small is what lets a sampler swap
transformers for vLLM through config alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # named in annotations only: the protocol module stays free of torch
    import torch


@dataclass
class Sample:
    """One sampled completion of a step's prompt."""

    text: str
    n_tokens: int
    sum_logprob: float

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per token (the rollout's selection key)."""
        return -self.sum_logprob / max(self.n_tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.mean_nll, 700.0))


@runtime_checkable
class Engine(Protocol):
    """Batched sampling with per-sample token counts and summed log-probabilities."""

    #: policy version of the weights currently loaded (0 = as loaded from disk)
    version: int

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        max_new_tokens: int,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """Return ``n`` samples for each prompt, in prompt order.

        ``text`` excludes the prompt and is cut before the first stop string;
        ``n_tokens``/``sum_logprob`` cover exactly the tokens kept (the stop string
        included when it was generated, so likelihoods are comparable). Temperature
        0 means greedy. The same ``seed`` gives the same samples.
        """
        ...

    def load_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Replace the weights in place and set ``version``."""
        ...

    def close(self) -> None:
        """Release what the engine holds beyond Python memory (an engine process, files); safe twice."""
        ...
