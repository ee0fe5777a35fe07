"""Typed config loading: every shipped config validates; bad ones fail in one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from core.config import MODEL_FIELDS, SECTIONS, WORLD_REF, AgentConfig, Config, ConfigError, load_config
from core.hub import is_local
from core.seeds import purpose_seed
from rest.loop import ReSTLoop

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert any(p.name == "smoke.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_validate(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert set(cfg.to_dict()) == set(SECTIONS)


def test_shipped_configs_name_models_a_fresh_clone_has():
    """A shipped config names a hub id or a ``world:`` model, never a local path only a built world
    or an earlier run makes (a fresh clone has none, and loading would fail there)."""
    for path in CONFIGS:
        raw = yaml.safe_load(path.read_text()) or {}
        for section, key in MODEL_FIELDS:
            sec = raw.get(section) or {}
            value = sec.get(key) or ""
            if sec.get("random_init"):
                continue  # engine.model with random_init is made on first use
            for ref in value.values() if isinstance(value, dict) else [value]:
                assert not ref or ref.startswith(WORLD_REF) or not is_local(ref), f"{path.name}: {section}.{key}: {ref}"


def test_world_references_follow_world_dir_and_arch():
    sets = ["world.dir=w", "models.students={S: world:S-base}", "ranker.judge_model=world:L-warm"]
    cfg = load_config(None, sets)
    assert cfg.models.students == {"S": "w/models/S-base"} and cfg.ranker.judge_model == "w/models/L-warm"
    cfg = load_config(None, [*sets, "world.arch=qwen2", "eval.judge_model=world:XS-base"])
    assert cfg.models.students == {"S": "w/models/qwen2/S-base"}
    assert cfg.eval.judge_model == "w/models/qwen2/XS-base"


def test_defaults_and_overrides():
    cfg = load_config(None, ["agent.k_samples=8", "agent.temperature=1", "agent.self_checks=false"])
    assert cfg.agent.k_samples == 8
    assert cfg.agent.temperature == 1.0 and isinstance(cfg.agent.temperature, float)
    assert cfg.agent.self_checks is False
    assert cfg.engine == load_config(None).engine
    assert AgentConfig().k_samples == 4  # the paper's K


def test_every_field_is_documented():
    import dataclasses

    for name, cls in SECTIONS.items():
        assert cls.__doc__, name
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{name}.{f.name} has no doc"


BAD = [
    ("agent:\n  k_sample: 4\n", "agent.k_sample", "unknown key"),
    ("agent:\n  k_samples: four\n", "agent.k_samples", "integer"),
    ("agent:\n  k_samples: -3\n", "agent.k_samples", ">= 1"),
    ("agent:\n  k_samples: 2.5\n", "agent.k_samples", "integer"),
    ("agent:\n  temperature: hot\n", "agent.temperature", "number"),
    ("agent:\n  temperature: -0.1\n", "agent.temperature", ">= 0"),
    ("agent:\n  self_checks: 1\n", "agent.self_checks", "true or false"),
    ("agent:\n  prompt_style: chat\n", "agent.prompt_style", "one of"),
    ("agent:\n  search_budget: -1\n", "agent.search_budget", ">= 0"),
    ("agent: 5\n", "agent", "mapping"),
    ("agents:\n  k_samples: 4\n", "agents", "unknown section"),
    ("engine:\n  backend: tensorrt\n", "engine.backend", "one of"),
    ("engine:\n  max_batch: 0\n", "engine.max_batch", ">= 1"),
    ("engine:\n  gpu_memory_utilization: 1.5\n", "engine.gpu_memory_utilization", "<= 1.0"),
    ("search:\n  corpus: /no/such/corpus.jsonl\n", "search.corpus", "not found"),
    ("models:\n  students: {S: world:Q-base}\nworld:\n  dir: w\n", "models.students", "unknown world model"),
    ("ranker:\n  judge_model: world:L-warm\n", "ranker.judge_model", "needs world.dir"),
    ("eval:\n  judge_model: ./no/such/judge\n", "eval.judge_model", "model directory not found"),
    ("search:\n  timeout_s: 0\n", "search.timeout_s", ">= 0.1"),
    ("search:\n  retries: many\n", "search.retries", "integer"),
    ("- just\n- a list\n", "", "mapping of sections"),
    ("agent: {k_samples: [4\n", "", "not valid YAML"),
]


@pytest.mark.parametrize("text,key,words", BAD, ids=[b[1] or b[2] for b in BAD])
def test_bad_configs_name_the_key_and_file(tmp_path, text, key, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    assert key in msg and words in msg


def test_bad_override_is_a_config_error():
    for bad in (["agent.k_samples"], ["agent=3"], ["agent.nope=1"], ["agent.k_samples=zero"]):
        with pytest.raises(ConfigError):
            load_config(None, bad)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text,extra",
    [("agent:\n  k_sample: 4\n", []), ("agent:\n  k_samples: 4\n", ["--set", "engine.backend=onnx"])],
)
def test_cli_exits_2_with_one_line(tmp_path, text, extra):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "rest", "episode", "--config", str(path), "--question", "q", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and str(path) in lines[0]
    assert "Traceback" not in proc.stderr


def test_readme_reference_is_current():
    from core.config import readme_with_reference

    readme = (ROOT / "docs" / "configuration.md").read_text()
    assert readme_with_reference(readme) == readme, "run: python -m core.config --write-docs"


def test_sampling_derives_from_agent_seed_and_fine_tunes_from_learner_seed():
    loop = SimpleNamespace(cfg=load_config(None, ["agent.seed=3", "learner.seed=5"]))
    assert ReSTLoop._seed(loop, 1, "rollout-0") == purpose_seed(3, 1, "rollout-0")
    assert ReSTLoop._fit_seed(loop, 1, "fit-L") == purpose_seed(5, 1, "fit-L")
    assert ReSTLoop._fit_seed(loop, 2, "rename") == purpose_seed(5, 2, "rename")
