"""Weight broadcast helpers: a checksum, a bucket plan, and a standalone collective group.

The learner sends new weights to every sampler after each fine-tune; the protocol
is checked, not assumed: every delivery carries the policy version and a checksum
of the exact tensors sent (sha256, computed once by learner rank 0 from the copy it
already keeps), and every bucket of a collective send is followed by its fingerprint.

Two transports share these helpers (``learner.group.LearnerGroup.broadcast``):

* object store: learner rank 0 returns its state dict once (CPU tensors) and every
  sampler's ``load_weights`` gets the same object reference;
* collective: learner rank 0 and the N receivers form a ``WeightGroup`` of N + 1
  ranks (gloo on CPU, NCCL between distinct GPUs, the same code). Rank 0 packs the tensors, in
  ``plan_buckets`` order, into buckets of about ``bucket_bytes`` on its device and
  broadcasts them one after another, each followed by its byte-sum fingerprint;
  a receiver gets each bucket on its own device, checks the fingerprint, and hands
  the bucket's tensors on (``receive_buckets``): an HF sampler into a state dict, a
  vLLM worker straight into its model's in-place reload, with no file and no extra
  host copy. The group is built on its own ``TCPStore``, so it never touches any
  process's default process group (torch.distributed allows only one).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Iterator, Mapping

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


def state_meta(state: Mapping[str, torch.Tensor]) -> list:
    """One ``[name, dtype, shape, nbytes]`` list per tensor, in the state's order (plain JSON-able values)."""
    _check_state(state)
    return [[name, _dtype_name(t, name), list(t.shape), t.numel() * t.element_size()] for name, t in state.items()]


#: byte alignment of every tensor inside a bucket, so each can be viewed in its dtype without a copy
ALIGN = 16


def plan_buckets(meta: list, bucket_bytes: int) -> list[list[list[int]]]:
    """The buckets of a collective send: per bucket, ``[tensor index, byte offset]`` pairs.

    Tensors keep ``meta`` order; a bucket closes when the next tensor would take it past
    ``bucket_bytes`` (a tensor larger than that travels alone). Offsets are aligned to
    ``ALIGN`` bytes. Sender and receivers use the same plan.
    """
    if bucket_bytes < 1:
        raise ValueError(f"plan_buckets: bucket_bytes must be >= 1, got {bucket_bytes}")
    meta_nbytes(meta)
    buckets: list[list[list[int]]] = []
    at = 0
    for i, (_, _, _, nbytes) in enumerate(meta):
        if not buckets or (at and at + nbytes > bucket_bytes):
            buckets.append([])
            at = 0
        buckets[-1].append([i, at])
        at = _aligned(at + nbytes)
    return buckets


def bucket_size(meta: list, bucket: list[list[int]]) -> int:
    """Bytes of one planned bucket (its last tensor's end)."""
    i, offset = bucket[-1]
    return offset + meta[i][3]


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


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


def verify_checksum(state: Mapping[str, torch.Tensor], checksum: str) -> str:
    """Return ``checksum`` when ``state`` matches it, else ValueError naming both digests."""
    got = weights_checksum(state)
    if got != checksum:
        raise ValueError(f"weights checksum mismatch: received {got[:16]}..., expected {checksum[:16]}...")
    return got


class WeightGroup:
    """A standalone group of ``world_size`` processes for broadcasting weights: gloo over CPU
    tensors, or NCCL over the current CUDA device's (``backend``; ``device`` is where buffers live).

    Rank 0 hosts a ``TCPStore`` at ``master_addr:master_port``; the others connect to
    it; the group lives on a prefix of that store and is independent of any default
    process group, so a DeepSpeed rank, a sampler and a vLLM worker (which run their own
    torch.distributed worlds) can all join. Every member must construct it at about
    the same time: construction is a rendezvous that waits up to ``timeout_s``.
    """

    def __init__(
        self, master_addr: str, master_port: int, rank: int, world_size: int, timeout_s: float = 60.0,
        backend: str = "gloo",
    ):
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"WeightGroup: backend must be gloo or nccl, got {backend!r}")
        if world_size < 2 or not 0 <= rank < world_size:
            raise ValueError(
                f"WeightGroup: need 0 <= rank < world_size and world_size >= 2, got {rank}/{world_size}"
            )
        if not 0 < int(master_port) < 65536:
            raise ValueError(f"WeightGroup: bad master_port {master_port!r}")
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
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
            store = dist.PrefixStore("weights", self._store)
            if backend == "nccl":
                opts = dist.ProcessGroupNCCL.Options()
                opts._timeout = self.timeout
                self._pg = dist.ProcessGroupNCCL(store, rank, world_size, opts)
            else:
                opts = dist.ProcessGroupGloo._Options()
                opts._timeout = self.timeout
                opts._devices = [dist.ProcessGroupGloo.create_device(hostname=_local_host(master_addr))]
                self._pg = dist.ProcessGroupGloo(store, rank, world_size, opts)
        except RuntimeError as e:  # DistStoreError and gloo errors are RuntimeErrors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(
                f"WeightGroup rank {rank}/{world_size} could not join {master_addr}:{master_port}: {first}"
            ) from None

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Broadcast ``tensor`` (same shape on every rank, on ``self.device``) from ``src``, in place."""
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


def device_key() -> str | None:
    """This Ray worker's GPU as ``node:gpu-ids``, or None where it holds no GPU."""
    import ray

    ids = ray.get_gpu_ids() if ray.is_initialized() else []
    return f"{ray.get_runtime_context().get_node_id()}:{','.join(map(str, ids))}" if ids else None


def group_backend(learner_backend: str, keys: list[str | None]) -> str:
    """The weight group's backend for members on devices ``keys`` (rank 0's first): NCCL where the
    learner trains over NCCL and every member holds a GPU no other member holds, gloo over host
    buffers otherwise (NCCL cannot put two ranks of a group on one GPU, e.g. a sampler colocated
    with learner rank 0, ``rest.colocation``: such a sync goes through host memory; handing CUDA
    memory over in place, as OpenRLHF's CUDA IPC does, is not built)."""
    if learner_backend == "nccl" and None not in keys and len(set(keys)) == len(keys):
        return "nccl"
    return "gloo"


def _local_host(master_addr: str) -> str:
    """The address this member's gloo device binds: loopback when the master is local, else ours."""
    if master_addr in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    import socket

    # the interface that routes to the master (no packet is sent by a UDP connect)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((master_addr, 1))
        return s.getsockname()[0]


def send_buckets(group: WeightGroup, state: Mapping[str, torch.Tensor], meta: list, plan: list) -> int:
    """Rank 0's half of a collective send: every planned bucket, packed on the group's device, then its
    fingerprint; one bucket's buffer exists at a time. Returns the bytes sent."""
    if group.rank != 0:
        raise ValueError(f"send_buckets: only rank 0 sends, this is rank {group.rank}")
    tensors = list(state.values())
    sent = 0
    for bucket in plan:
        buf = torch.zeros(bucket_size(meta, bucket), dtype=torch.uint8, device=group.device)
        for i, offset in bucket:
            buf[offset: offset + meta[i][3]].copy_(_as_bytes(tensors[i]).to(group.device, non_blocking=True))
        group.broadcast(buf, src=0)
        group.broadcast(_fingerprint(buf), src=0)
        sent += buf.numel()
    return sent


def receive_buckets(group: WeightGroup, meta: list, plan: list) -> Iterator[tuple[str, torch.Tensor]]:
    """A receiver's half: per planned bucket, receive it into a fresh buffer on the group's device, check
    its fingerprint (ValueError naming the bucket on a mismatch, before any of its tensors is handed on)
    and yield ``(name, tensor)`` views into it, in ``meta`` order."""
    if group.rank == 0:
        raise ValueError("receive_buckets: rank 0 is the sender")
    for b, bucket in enumerate(plan):
        buf = torch.empty(bucket_size(meta, bucket), dtype=torch.uint8, device=group.device)
        group.broadcast(buf, src=0)
        expected = group.broadcast(torch.zeros(1, dtype=torch.int64, device=group.device), src=0)
        got = _fingerprint(buf)
        if int(got.item()) != int(expected.item()):
            raise ValueError(f"weights bucket {b + 1}/{len(plan)} arrived changed (fingerprint {int(got.item())}, "
                             f"sent {int(expected.item())})")
        for i, offset in bucket:
            name, dtype, shape, nbytes = meta[i]
            yield name, buf[offset: offset + nbytes].view(_DTYPES[dtype]).reshape(shape)


def _fingerprint(buf: torch.Tensor) -> torch.Tensor:
    """A bucket's byte sum, computed where the bucket is (no host copy of the weights)."""
    return buf.sum(dtype=torch.int64).reshape(1)
