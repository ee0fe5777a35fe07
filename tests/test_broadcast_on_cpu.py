"""Weight broadcast helpers: checksum, bucket plans, and bucketed sends over a real 2-process gloo group."""

from __future__ import annotations

import multiprocessing as mp
import socket

import pytest
import torch

from learner.broadcast import (
    ALIGN,
    WeightGroup,
    bucket_size,
    group_backend,
    meta_nbytes,
    plan_buckets,
    receive_buckets,
    send_buckets,
    state_meta,
    verify_checksum,
    weights_checksum,
)


def mixed_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(7, 5, generator=g),
        "h": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "f16": torch.randn(6, generator=g).half(),
        "ids": torch.randint(-5, 5, (4, 2), generator=g),
        "mask": torch.rand(5, generator=g) > 0.5,
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "bytes": torch.randint(0, 255, (9,), generator=g, dtype=torch.uint8),
        "t": torch.randn(4, 6, generator=g).t(),  # not contiguous
    }


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def test_checksum_ignores_dict_order_and_copies():
    state = mixed_state()
    shuffled = {k: state[k].clone() for k in reversed(list(state))}
    assert weights_checksum(state) == weights_checksum(shuffled)
    assert len(weights_checksum(state)) == 64


def test_checksum_changes_with_any_byte():
    state = mixed_state()
    base = weights_checksum(state)
    seen = {base}
    for name, t in state.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8)
        for pos in {0, raw.numel() // 2, raw.numel() - 1} if raw.numel() else ():
            changed = raw.clone()
            changed[pos] ^= 1
            other = dict(state, **{name: changed.view(t.dtype).reshape(t.shape)})
            digest = weights_checksum(other)
            assert digest not in seen, (name, pos)
            seen.add(digest)


def test_checksum_sees_names_shapes_and_dtypes():
    w = torch.arange(12, dtype=torch.float32)
    base = weights_checksum({"w": w})
    assert weights_checksum({"v": w}) != base
    assert weights_checksum({"w": w.reshape(3, 4)}) != base  # same bytes, other shape
    assert weights_checksum({"w": w.view(torch.int32)}) != base  # same bytes, other dtype
    assert weights_checksum({"w": w, "x": torch.zeros(0)}) != base  # an extra empty tensor


def test_bucket_plan_keeps_order_aligns_and_caps_sizes():
    state = mixed_state(3)
    meta = state_meta(state)
    assert meta_nbytes(meta) == sum(t.numel() * t.element_size() for t in state.values())
    for cap in (1, 40, 100, 10_000):
        plan = plan_buckets(meta, cap)
        assert [i for bucket in plan for i, _ in bucket] == list(range(len(meta)))  # every tensor once, in order
        for bucket in plan:
            assert all(offset % ALIGN == 0 for _, offset in bucket)
            lone = sum(meta[i][3] > 0 for i, _ in bucket) == 1  # only a lone (non-empty) tensor may exceed it
            assert bucket_size(meta, bucket) <= cap or lone
    assert len(plan_buckets(meta, 10_000)) == 1 and len(plan_buckets(meta, 1)) == len(meta) - 1  # "empty" joins
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets(meta, 0)
    with pytest.raises(ValueError, match="unknown dtype"):
        plan_buckets([["a", "complex7", [3], 12]], 64)
    with pytest.raises(ValueError, match="do not fit shape"):
        plan_buckets([["a", "float32", [4], 12]], 64)
    with pytest.raises(TypeError, match="not a str"):
        state_meta({"a": [1, 2]})


def test_verify_checksum():
    state = mixed_state()
    digest = weights_checksum(state)
    assert verify_checksum(state, digest) == digest
    with pytest.raises(ValueError, match="checksum mismatch"):
        verify_checksum(dict(state, w=state["w"] + 1), digest)


# ---------------------------------------------------------------- a real gloo group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _receiver(port: int, meta: list, plan: list, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    group = WeightGroup("127.0.0.1", port, 1, 2, timeout_s=60)
    try:
        got = []
        for _ in range(2):
            try:
                got.append(weights_checksum({n: t.clone() for n, t in receive_buckets(group, meta, plan)}))
            except ValueError as e:
                got.append(f"error: {e}")
        out.put(tuple(got))
    finally:
        group.close()


def _serve(port: int, meta: list, plan: list, sends) -> tuple:
    """Run ``sends(group)`` as rank 0 against a receiver process; returns what the receiver saw."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_receiver, args=(port, meta, plan, out))
    child.start()
    try:
        group = WeightGroup("127.0.0.1", port, 0, 2, timeout_s=60)
        try:
            sends(group)
            got = out.get(timeout=60)
        finally:
            group.close()
        child.join(timeout=30)
        assert child.exitcode == 0
        return got
    finally:
        if child.is_alive():
            child.kill()


def test_bucketed_sends_between_two_processes():
    first, second = mixed_state(1), mixed_state(2)
    meta = state_meta(first)
    assert meta == state_meta(second)
    plan = plan_buckets(meta, 64)  # several buckets, some tensors alone
    assert len(plan) > 3

    def sends(group):
        assert send_buckets(group, first, meta, plan) == sum(bucket_size(meta, b) for b in plan)
        send_buckets(group, second, meta, plan)  # the group serves more than one broadcast

    assert _serve(_free_port(), meta, plan, sends) == (weights_checksum(first), weights_checksum(second))


def test_a_bucket_that_arrives_changed_is_refused():
    """Every bucket is followed by its fingerprint: a receiver refuses one that does not match
    (here the sender announces a wrong one) before handing any of its tensors on."""
    state = mixed_state(1)
    meta = state_meta(state)
    plan = plan_buckets(meta, 10_000)

    def sends(group):
        buf = torch.zeros(bucket_size(meta, plan[0]), dtype=torch.uint8)
        group.broadcast(buf, src=0)
        group.broadcast(torch.tensor([12345], dtype=torch.int64), src=0)  # not the zeros' byte sum
        send_buckets(group, state, meta, plan)  # the group still works afterwards

    got = _serve(_free_port(), meta, plan, sends)
    assert got[0] == "error: weights bucket 1/1 arrived changed (fingerprint 0, sent 12345)"
    assert got[1] == weights_checksum(state)


def test_weight_group_missing_peer_fails_within_timeout():
    # the rendezvous is bounded by timeout_s: a peer that never comes is an error, not a hang
    with pytest.raises(RuntimeError, match="rank 0/2 could not join"):
        WeightGroup("127.0.0.1", _free_port(), 0, 2, timeout_s=2)


def test_weight_group_roles_and_arguments():
    with pytest.raises(ValueError, match="backend must be gloo or nccl"):
        WeightGroup("127.0.0.1", 12345, 0, 2, backend="mpi")
    with pytest.raises(ValueError, match="world_size"):
        WeightGroup("127.0.0.1", 12345, 2, 2)
    with pytest.raises(ValueError, match="master_port"):
        WeightGroup("127.0.0.1", 0, 0, 2)


def test_the_weight_group_is_nccl_only_between_distinct_gpus():
    assert group_backend("nccl", ["n1:0", "n1:1", "n2:0"]) == "nccl"
    assert group_backend("nccl", ["n1:0", "n1:0"]) == "gloo"  # a sampler on learner rank 0's GPU
    assert group_backend("nccl", ["n1:0", None]) == "gloo"  # a sampler on the CPU
    assert group_backend("gloo", ["n1:0", "n1:1"]) == "gloo"  # a learner that trains over gloo
