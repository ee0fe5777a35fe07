"""Learner memory on real DeepSpeed ranks (two Ray actors over gloo): gradient accumulation,
bf16 under ZeRO-3 with zero.Init and gradient checkpointing, the per-parameter 16-bit save.

Each fit is a few optimizer steps of a tiny random Llama on step examples whose prompts
vary in length, so micro-batches hold different token counts (the case where averaging
per-micro-batch means would differ from the batch's token mean).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import ray
import torch
from rest_fixtures import TINY, step_examples  # noqa: E402
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from core.config import LearnerConfig
from learner.broadcast import weights_checksum
from learner.group import LearnerGroup
from toyworld.modelzoo import init_model, train_tokenizer

pytestmark = pytest.mark.slow
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[2]
@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("memory")
    train_tokenizer([e.prompt + e.completion for e in step_examples(200, 1, filler=True)], root / "tok", vocab_size=320)
    return init_model(TINY, root / "tok", root / "base", seed=0)


#: the group's config before each fit's settings
CONFIG = LearnerConfig(world_size=2, batch_size=32, epochs=2, lr=3e-3, warmup_steps=1, max_len=64,
                       num_cpus_per_rank=0.5, timeout_s=300.0)


@pytest.fixture(scope="module")
def group(cluster):
    g = LearnerGroup(CONFIG)
    yield g
    g.shutdown()


def fit(group, base, out: Path, examples, **settings):
    """One fit of ``group`` with ``settings`` applied to ``CONFIG``; returns (FitResult, saved tensors)."""
    group.cfg = dataclasses.replace(CONFIG, **settings)
    result = group.fit(str(base), examples, str(out), seed=0, name="L")
    return result, load_file(out / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("stage", [0, 3])
def test_four_micro_batches_of_four_match_one_batch_of_sixteen(group, base, tmp_path, stage):
    """Per rank, 4 accumulated micro-batches of 4 give the update of one batch of 16 (both ranks)."""
    examples = step_examples(64, 2, filler=True)  # 2 global batches of 32 per epoch: 4 optimizer steps
    one, one_w = fit(group, base, tmp_path / "one", examples, zero_stage=stage, micro_batch_size=16)
    assert group.last_fit["memory"]["micro_batch"] == 16 and group.last_fit["memory"]["accumulation"] == 1
    acc, acc_w = fit(group, base, tmp_path / "acc", examples, zero_stage=stage, micro_batch_size=4)
    memory = group.last_fit["memory"]
    assert (memory["micro_batch"], memory["accumulation"], memory["zero_init"]) == (4, 4, stage == 3)
    assert acc.steps == one.steps == 4
    assert acc.losses == pytest.approx(one.losses, abs=1e-5)
    assert max_diff(acc_w, one_w) < 1e-5
    assert one.losses[-1] < one.losses[0] - 0.3  # and the fit learns


def test_a_short_last_batch_still_accumulates_correctly(group, base, tmp_path):
    """37 examples in batches of 16: the last global batch has 5, so some ranks' micro-batches
    are empty (they run with a zeroed loss); the update still equals one pass per rank."""
    examples = step_examples(37, 3, filler=True)
    one, one_w = fit(group, base, tmp_path / "one", examples, zero_stage=0, batch_size=16, micro_batch_size=8)
    acc, acc_w = fit(group, base, tmp_path / "acc", examples, zero_stage=0, batch_size=16, micro_batch_size=2)
    assert group.last_fit["memory"]["accumulation"] == 4 and acc.examples == 37
    assert acc.losses == pytest.approx(one.losses, abs=1e-5)
    assert max_diff(acc_w, one_w) < 1e-5


def test_bf16_zero3_builds_partitioned_and_saves_16bit(group, base, tmp_path):
    """bf16 + ZeRO-3: built under zero.Init, trained with gradient checkpointing and sdpa,
    saved gathered one parameter at a time as a loadable bf16 checkpoint close to fp32's."""
    examples = step_examples(64, 2, filler=True)
    ref, ref_w = fit(group, base, tmp_path / "fp32", examples, zero_stage=0, micro_batch_size=0)
    result, saved = fit(
        group, base, tmp_path / "bf16", examples,
        zero_stage=3, precision="bf16", micro_batch_size=4, gradient_checkpointing=True,
    )
    assert group.last_fit["memory"] == {
        "micro_batch": 4, "accumulation": 4, "gradient_checkpointing": True,
        "attention": "sdpa", "zero_init": True, "dtype": "bfloat16", "peak_gpu_bytes": None,  # None: no GPU
    }
    assert group.last_fit["jit_ops"] == []
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert weights_checksum(saved) == group.last_fit["checksum"]
    meta = json.loads((tmp_path / "bf16" / "training.json").read_text())
    assert meta["checksum"] == group.last_fit["checksum"] and meta["zero_init"] is True
    before = load_file(base / "model.safetensors")
    assert saved.keys() == before.keys() and any(not torch.equal(saved[k].float(), before[k]) for k in before)
    assert result.losses == pytest.approx(ref.losses, abs=0.05)  # bf16 rounding, same training
    assert max_diff(saved, ref_w) < 0.02
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", use_safetensors=True)
    assert torch.equal(model.get_input_embeddings().weight.to(torch.bfloat16), saved["model.embed_tokens.weight"])
