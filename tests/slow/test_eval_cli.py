"""``rest-react eval`` as a user runs it: a tiny random model on Bamboogle over the targeted corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "bamboogle_support.jsonl.gz"


def _eval(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "rest", "eval", "--config", "configs/smoke.yaml",
         "--model", str(tmp_path / "tiny-model"), "--set", f"search.cache_dir={tmp_path / 'bm25'}", *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )


def test_eval_bamboogle_on_the_targeted_corpus(tmp_path):
    out = tmp_path / "out"
    proc = _eval("--dataset", "bamboogle", "--limit", "5", "--corpus", str(CORPUS), "--out", str(out),
                 tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()  # libraries may log to stdout before the summary
    at = next(i for i, line in enumerate(lines) if line.startswith("bamboogle  model="))
    summary = lines[at]
    assert "n=5" in summary and "targeted corpus" in summary
    assert "judge=deterministic: normalised exact match" in summary
    assert lines[at + 1].startswith("end reasons: ")
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["question_id"] for p in preds] == [f"bamboogle-{i:03d}" for i in range(5)]
    score = json.loads((out / "score.json").read_text())
    assert score["n"] == 5 and score["search"]["targeted_corpus"] is True
    assert score["accuracy"] == sum(p["exact_match"] for p in preds) / 5
    assert sum(score["end_reasons"].values()) == 5
    assert (tmp_path / "tiny-model" / "model.safetensors").exists()


def test_eval_malformed_dataset_exits_2_naming_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "Who?", "answers": ["x"]}\n{"id": "b", "question": "Who?"\n')
    proc = _eval("--dataset", str(bad), "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {bad}:2: malformed JSON")
    assert not (tmp_path / "out").exists()
