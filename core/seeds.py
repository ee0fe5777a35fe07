"""Seed derivation: every seed a run uses comes from the config's seed and what it is for."""

from __future__ import annotations

import zlib

_MODULUS = 2**31 - 1


def derive_seed(base: int, index: int, offset: int) -> int:
    """A seed determined by ``base``, ``index`` and ``offset``, distinct as either changes."""
    return (base * 1_000_003 + index * 7_919 + offset) % _MODULUS


def wave_seed(base: int, wave: int) -> int:
    """The sampling seed of wave ``wave`` of a rollout: deterministic, distinct per wave."""
    return derive_seed(base, wave, 17)


def purpose_seed(base: int, index: int, purpose: str) -> int:
    """The seed of one use (``purpose``, e.g. ``fit-L``) at ``index`` (e.g. a generation)."""
    return derive_seed(base, index, zlib.crc32(purpose.encode()))
