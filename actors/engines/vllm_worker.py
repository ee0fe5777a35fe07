"""What the learner's weight broadcast needs inside a vLLM worker process (``worker_extension_cls``).

vLLM runs the model in a worker process of its own, so the sampler actor that owns a
``VLLMEngine`` cannot load weights into it directly. ``WeightReceiver`` is mixed into
vLLM's worker class; the engine reaches its methods through ``collective_rpc``. The
worker joins the learner's ``WeightGroup`` itself and feeds the received buckets
(``learner.broadcast.receive_buckets``) to vLLM's in-place weight reload as a stream:
no file, no copy through the sampler's process. Names carry an ``rr_`` prefix because
vLLM refuses an extension attribute that its worker already has.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from learner.broadcast import WeightGroup, receive_buckets

#: the tied output layer, and the embedding it shares its weights with
LM_HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"


class WeightReceiver:
    """Methods added to vLLM's worker (one worker per engine here: no tensor parallelism)."""

    def rr_join_weight_group(self, master_addr: str, master_port: int, rank: int, world_size: int,
                             timeout_s: float, backend: str) -> None:
        """Join the learner's weight group as ``rank`` (its buffers on this worker's device)."""
        self.rr_leave_weight_group()
        self._rr_group = WeightGroup(master_addr, master_port, rank, world_size, timeout_s, backend)

    def rr_receive_weights(self, meta: list, plan: list) -> None:
        """Receive one broadcast and reload the model in place from it."""
        group = getattr(self, "_rr_group", None)
        if group is None:
            raise RuntimeError("vLLM worker: receive_weights before join_weight_group")
        tied = bool(getattr(self.model_config.hf_config, "tie_word_embeddings", False))
        names = {m[0] for m in meta}
        stream = receive_buckets(group, meta, plan)
        if tied and LM_HEAD not in names:
            stream = _with_tied_head(stream)
        self.model_runner.reload_weights(weights_iterator=stream)

    def rr_leave_weight_group(self) -> None:
        group, self._rr_group = getattr(self, "_rr_group", None), None
        if group is not None:
            group.close()


def _with_tied_head(stream: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The stream with the embedding repeated as the tied output layer: vLLM's in-place reload refills
    every layer it holds, and one given nothing keeps its old weights (seen in vllm 0.32)."""
    for name, tensor in stream:
        yield name, tensor
        if name == EMBED:
            yield LM_HEAD, tensor
