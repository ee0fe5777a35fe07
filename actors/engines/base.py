"""The one interface every inference engine (transformers, vLLM) implements.

The episode runner only ever calls ``generate`` with a whole wave of prompts (one
call per wave, many episodes at once) and the learner's broadcast only ever calls
``load_weights``. Keeping the surface this small is what lets a sampler swap
transformers for vLLM through config alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from agent.trajectory import Sample


class EngineError(RuntimeError):
    """An engine could not produce samples (bad model dir, out of memory...)."""


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
