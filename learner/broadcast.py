"""Weight broadcast helpers: a checksum, one flat byte buffer, and a standalone gloo group.

The learner sends new weights to every sampler after each fine-tune; the protocol
is checked, not assumed: every delivery carries the policy version and a checksum
of the exact tensors sent, and the receiver recomputes it before loading.

Two transports share these helpers (``learner.group.LearnerGroup.broadcast``):

* object store: learner rank 0 returns its state dict once (CPU tensors) and every
  sampler's ``load_weights`` gets the same object reference;
* collective: learner rank 0 and the N samplers form a ``WeightGroup`` of N + 1
  ranks, and rank 0 broadcasts one flat byte buffer (``flatten_state``); each
  sampler allocates the buffer from the metadata, receives it and unflattens it
  (``receive_state``). The group is built on its own ``TCPStore``, so it never
  touches either side's default process group (torch.distributed allows only one).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Mapping

import torch
import torch.distributed as dist

#: dtype name in the metadata -> torch dtype (the names are ``str(dtype)`` without "torch.")
_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}


def _dtype_name(t: torch.Tensor, name: str) -> str:
    key = str(t.dtype).removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"weights: tensor {name!r} has unsupported dtype {t.dtype}")
    return key


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes as a flat uint8 CPU tensor (a view when already contiguous on CPU)."""
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)


def _check_state(state: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(f"weights: expected a mapping of name -> tensor, got {type(state).__name__}")
    for name, t in state.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"weights: entry {name!r} is not a str -> torch.Tensor pair")


def weights_checksum(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex digest over the sorted names, each tensor's dtype, shape and raw bytes.

    It depends on content only (not on dict order or device), so the learner and a
    sampler that received the same tensors compute the same string, and any changed
    byte, name, shape or dtype changes it.
    """
    _check_state(state)
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        header = json.dumps([name, _dtype_name(t, name), list(t.shape), t.numel() * t.element_size()])
        h.update(header.encode() + b"\n")
        h.update(_as_bytes(t).numpy())
    return h.hexdigest()


def flatten_state(state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list]:
    """All tensors' bytes in one uint8 CPU buffer, plus the metadata to cut it apart again.

    Metadata: one ``[name, dtype, shape, nbytes]`` list per tensor, in buffer order
    (plain JSON-able values, cheap to send through Ray). Mixed dtypes are fine: the
    buffer holds bytes, not numbers.
    """
    _check_state(state)
    meta = []
    for name, t in state.items():
        meta.append([name, _dtype_name(t, name), list(t.shape), t.numel() * t.element_size()])
    flat = torch.empty(sum(m[3] for m in meta), dtype=torch.uint8)
    at = 0
    for (_, _, _, n), t in zip(meta, state.values(), strict=True):
        flat[at : at + n].copy_(_as_bytes(t))
        at += n
    return flat, meta


def meta_nbytes(meta: list) -> int:
    """Total buffer size that ``meta`` describes; ValueError on malformed metadata."""
    total = 0
    for i, entry in enumerate(meta):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 4):
            raise ValueError(
                f"weights meta entry {i} must be [name, dtype, shape, nbytes], got {entry!r:.80}"
            )
        name, dtype, shape, nbytes = entry
        if dtype not in _DTYPES:
            raise ValueError(f"weights meta entry {name!r}: unknown dtype {dtype!r}")
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError(f"weights meta entry {name!r}: bad shape {shape!r}")
        itemsize = torch.empty((), dtype=_DTYPES[dtype]).element_size()
        if nbytes != math.prod(shape) * itemsize:
            raise ValueError(
                f"weights meta entry {name!r}: {nbytes} bytes do not fit shape {shape} of {dtype}"
            )
        total += nbytes
    return total


def unflatten_state(flat: torch.Tensor, meta: list) -> dict[str, torch.Tensor]:
    """Cut a ``flatten_state`` buffer back into named tensors (each its own copy, on CPU)."""
    if not isinstance(flat, torch.Tensor) or flat.dtype != torch.uint8 or flat.dim() != 1:
        raise ValueError("unflatten_state: flat must be a 1-D uint8 tensor")
    total = meta_nbytes(meta)
    if total != flat.numel():
        raise ValueError(f"unflatten_state: meta describes {total} bytes, the buffer has {flat.numel()}")
    flat = flat.to("cpu")
    out: dict[str, torch.Tensor] = {}
    at = 0
    for name, dtype, shape, n in meta:
        if name in out:
            raise ValueError(f"unflatten_state: tensor {name!r} appears twice in meta")
        out[name] = flat[at : at + n].clone().view(_DTYPES[dtype]).reshape(shape)
        at += n
    return out


def verify_checksum(state: Mapping[str, torch.Tensor], checksum: str) -> str:
    """Return ``checksum`` when ``state`` matches it, else ValueError naming both digests."""
    got = weights_checksum(state)
    if got != checksum:
        raise ValueError(f"weights checksum mismatch: received {got[:16]}..., expected {checksum[:16]}...")
    return got


class WeightGroup:
    """A standalone gloo group of ``world_size`` processes for broadcasting weights.

    Rank 0 hosts a ``TCPStore`` at ``master_addr:master_port``; the others connect to
    it; the group lives on a prefix of that store and is independent of any default
    process group, so a DeepSpeed rank and a sampler (which may run its own
    torch.distributed world) can both join. Every member must construct it at about
    the same time: construction is a rendezvous that waits up to ``timeout_s``.
    """

    def __init__(
        self, master_addr: str, master_port: int, rank: int, world_size: int, timeout_s: float = 60.0
    ):
        if world_size < 2 or not 0 <= rank < world_size:
            raise ValueError(
                f"WeightGroup: need 0 <= rank < world_size and world_size >= 2, got {rank}/{world_size}"
            )
        if not 0 < int(master_port) < 65536:
            raise ValueError(f"WeightGroup: bad master_port {master_port!r}")
        self.rank, self.world_size = rank, world_size
        self.timeout = datetime.timedelta(seconds=float(timeout_s))
        try:
            self._store = dist.TCPStore(
                master_addr,
                int(master_port),
                world_size,
                is_master=rank == 0,
                timeout=self.timeout,
                wait_for_workers=False,
            )
            opts = dist.ProcessGroupGloo._Options()
            opts._timeout = self.timeout
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname=_local_host(master_addr))]
            self._pg = dist.ProcessGroupGloo(dist.PrefixStore("weights", self._store), rank, world_size, opts)
        except RuntimeError as e:  # DistStoreError and gloo errors are RuntimeErrors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(
                f"WeightGroup rank {rank}/{world_size} could not join {master_addr}:{master_port}: {first}"
            ) from None

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Broadcast ``tensor`` (a CPU tensor of the same shape on every rank) from ``src``, in place."""
        if self._pg is None:
            raise RuntimeError("WeightGroup: broadcast on a closed group")
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = int(src), 0
        try:
            self._pg.broadcast([tensor], opts).wait(self.timeout)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"WeightGroup rank {self.rank}: broadcast failed: {first}") from None
        return tensor

    def close(self) -> None:
        """Leave the group and, on rank 0, stop the store; safe to call twice."""
        pg, self._pg = getattr(self, "_pg", None), None
        if pg is not None:
            try:
                pg.shutdown()
            except RuntimeError:
                pass  # a peer already gone: nothing left to shut down cleanly
        self._store = None


def _local_host(master_addr: str) -> str:
    """The address this member's gloo device binds: loopback when the master is local, else ours."""
    if master_addr in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    import socket

    # the interface that routes to the master (no packet is sent by a UDP connect)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((master_addr, 1))
        return s.getsockname()[0]


def send_state(group: WeightGroup, flat: torch.Tensor) -> None:
    """Rank 0's half of a collective weight broadcast: send the flat buffer."""
    if group.rank != 0:
        raise ValueError(f"send_state: only rank 0 sends, this is rank {group.rank}")
    group.broadcast(flat, src=0)


def receive_state(group: WeightGroup, meta: list) -> dict[str, torch.Tensor]:
    """A receiver's half: allocate the buffer ``meta`` describes, receive it, unflatten it."""
    if group.rank == 0:
        raise ValueError("receive_state: rank 0 is the sender")
    flat = torch.empty(meta_nbytes(meta), dtype=torch.uint8)
    group.broadcast(flat, src=0)
    return unflatten_state(flat, meta)
