"""Weight broadcast helpers: checksum, flat buffer round trips, and a real 2-process gloo group."""

from __future__ import annotations

import multiprocessing as mp
import socket

import pytest
import torch

from learner.broadcast import (
    WeightGroup,
    flatten_state,
    meta_nbytes,
    receive_state,
    send_state,
    unflatten_state,
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


def test_flatten_round_trip_mixed_dtypes():
    state = mixed_state(3)
    flat, meta = flatten_state(state)
    assert flat.dtype == torch.uint8 and flat.dim() == 1
    assert flat.numel() == meta_nbytes(meta) == sum(t.numel() * t.element_size() for t in state.values())
    back = unflatten_state(flat, meta)
    assert same(state, back)
    assert weights_checksum(back) == weights_checksum(state)
    flat.zero_()  # the unflattened tensors own their memory
    assert same(state, back)


def test_unflatten_rejects_bad_input():
    flat, meta = flatten_state({"a": torch.ones(3), "b": torch.ones(2, dtype=torch.int64)})
    with pytest.raises(ValueError, match="meta describes"):
        unflatten_state(flat[:-1], meta)
    with pytest.raises(ValueError, match="unknown dtype"):
        unflatten_state(flat, [["a", "complex7", [3], 12], meta[1]])
    with pytest.raises(ValueError, match="do not fit shape"):
        unflatten_state(flat, [["a", "float32", [4], 12], meta[1]])
    with pytest.raises(ValueError, match="twice"):
        unflatten_state(torch.cat([flat[:12], flat[:12]]), [meta[0], meta[0]])
    with pytest.raises(ValueError, match="1-D uint8"):
        unflatten_state(flat.float(), meta)
    with pytest.raises(TypeError, match="not a str"):
        flatten_state({"a": [1, 2]})


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


def _receiver(port: int, meta: list, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    group = WeightGroup("127.0.0.1", port, 1, 2, timeout_s=60)
    try:
        first = receive_state(group, meta)
        second = receive_state(group, meta)
        out.put((weights_checksum(first), weights_checksum(second)))
    finally:
        group.close()


def test_weight_group_between_two_processes():
    first, second = mixed_state(1), mixed_state(2)
    flat1, meta = flatten_state(first)
    flat2, meta2 = flatten_state(second)
    assert meta == meta2
    port = _free_port()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_receiver, args=(port, meta, out))
    child.start()
    try:
        group = WeightGroup("127.0.0.1", port, 0, 2, timeout_s=60)
        try:
            send_state(group, flat1)
            send_state(group, flat2)  # the group serves more than one broadcast
            got = out.get(timeout=60)
        finally:
            group.close()
        child.join(timeout=30)
        assert child.exitcode == 0
        assert got == (weights_checksum(first), weights_checksum(second))
    finally:
        if child.is_alive():
            child.kill()


def test_weight_group_missing_peer_fails_within_timeout():
    # the rendezvous is bounded by timeout_s: a peer that never comes is an error, not a hang
    with pytest.raises(RuntimeError, match="rank 0/2 could not join"):
        WeightGroup("127.0.0.1", _free_port(), 0, 2, timeout_s=2)


def test_weight_group_roles_and_arguments():
    with pytest.raises(ValueError, match="world_size"):
        WeightGroup("127.0.0.1", 12345, 2, 2)
    with pytest.raises(ValueError, match="master_port"):
        WeightGroup("127.0.0.1", 0, 0, 2)
