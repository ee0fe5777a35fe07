"""A tiny toy world built end to end: data, tokenizer, demonstrations, trained bases, evals, cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from evals.datasets import WORLD_JSON
from toyworld.world import RECIPES, SIZES, build_world

sys.path.insert(0, str(Path(__file__).parent))
from rest_fixtures import ensure_world  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world():
    """The slow suite's one tiny world (``rest_fixtures.ensure_world``: built here if no test built it
    first), so the suite trains its bases once."""
    out = ensure_world()
    return out, json.loads((out / WORLD_JSON).read_text())


def test_world_json_is_complete(world):
    out, record = world
    assert record["size"] == "tiny" and out.name == f"tiny-{record['seed']}"
    assert set(record["timings"]) == {"data", "demos", "tokenizer", "texts", "probes", "train", "eval", "total"}
    assert record["threads"] == 1 and all(c["precision"] == "fp32" for c in record["base_training"]["drills"].values())
    assert record["demos"]["trajectories"] > 0 and 0.0 < record["demos"]["accuracy"] < 1.0
    assert set(record["models"]) == set(SIZES)
    params = [record["models"][s]["params"] for s in SIZES]
    assert params == sorted(params) and params[0] > 0
    assert set(record["evals"]) == {"XS-base", "S-base", "L-base", "L-warm-closed-book"}
    assert {s: record["evals"][f"{s}-base"]["split"] for s in SIZES} == dict.fromkeys(SIZES, "dev")
    assert record["evals"]["L-warm-closed-book"]["split"] == "test"
    for ev in record["evals"].values():
        assert ev["n"] == 10 and 0.0 <= ev["accuracy"] <= 1.0 and 0.0 <= ev["parse_rate"] <= 1.0
        lo, hi = ev["ci95"]
        assert lo <= ev["accuracy"] <= hi
    assert record["evals"]["L-warm-closed-book"]["searches_per_episode"] == 0
    assert not list(out.parent.glob(f".{out.name}.building-*"))  # no leftovers of the temp dir


def test_training_lowered_the_loss_and_moved_the_weights(world):
    _, record = world
    for size in SIZES:
        m = record["models"][size]
        assert m["final_loss"] < m["first_loss"], (size, m)
        assert m["weight_change"] > 0.0 and m["steps"] == m["config"]["max_steps"]


def test_every_size_was_drilled_and_kept_drilling(world):
    _, record = world
    mix = record["base_training"]["drill_mix"]
    assert mix > 0 and set(record["base_training"]["drills"]) == set(SIZES)
    sequences = sum(record["training_sequences"].values())
    for size in SIZES:
        m = record["models"][size]
        assert m["drill"]["steps"] == record["base_training"]["drills"][size]["max_steps"], (size, m["drill"])
        assert m["drill_examples_mixed"] == round(mix * sequences) > 0


def test_every_model_dir_loads_in_transformers(world):
    out, _ = world
    for name in [f"{s}-base" for s in SIZES] + ["L-warm"]:
        model = AutoModelForCausalLM.from_pretrained(out / "models" / name, use_safetensors=True)
        assert model.config.model_type == "llama"
    warm, base = out / "models" / "L-warm", out / "models" / "L-base"
    assert warm.is_symlink() and os.readlink(warm) == "L-base"
    a = AutoModelForCausalLM.from_pretrained(warm, use_safetensors=True).state_dict()
    b = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_every_size_ended_on_the_demonstration_steps(world):
    """The tiny recipe's finishing run (issue 22): what makes its L-warm's rollouts parse."""
    _, record = world
    assert record["recipe_version"] == RECIPES["tiny"].version
    finish = record["base_training"]["finish"]
    assert set(finish) == set(SIZES)
    for size in SIZES:
        done = record["models"][size]["finish"]
        assert done["steps"] == finish[size]["max_steps"] and done["final_loss"] < done["first_loss"], (size, done)


def test_demonstrations_and_tokenizer_are_saved(world):
    out, record = world
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert sorted(p.name for p in (out / "demos").iterdir()) == ["aux0.jsonl.gz", "aux1.jsonl.gz"]


def test_a_second_build_returns_the_cached_world_without_retraining(world):
    out, record = world
    seed = record["seed"]
    files = [out / WORLD_JSON] + sorted((out / "models").glob("*-base/*.safetensors"))
    before = {f: f.stat().st_mtime_ns for f in files}
    assert build_world(out, seed=seed, size="tiny", progress=False) == record
    assert {f: f.stat().st_mtime_ns for f in files} == before
    with pytest.raises(ValueError, match=f"seed {seed}"):
        build_world(out, seed=seed + 1, size="tiny")


def test_cli_world_reuses_the_build(world):
    out, record = world
    seed = record["seed"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "rest", "world", "--out", str(out), "--seed", str(seed),
                           "--size", "tiny"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"seed {seed}, size tiny" in proc.stdout and "L-warm-closed-book" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "rest", "world", "--out", str(out), "--seed", str(seed + 1),
                          "--size", "tiny"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


def test_cli_eval_of_a_world_runs_the_agent_as_its_bases_learned(world, tmp_path):
    out, record = world
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "rest", "eval", "--world", str(out), "--model",
                           str(out / "models" / "L-warm"), "--dataset", "toy-test", "--limit", "3",
                           "--out", str(tmp_path / "ev")], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    agent = json.loads((tmp_path / "ev" / "score.json").read_text())["agent"]
    for key in ("prompt_style", "topk", "search_budget", "max_new_tokens"):
        assert agent[key] == record["agent"][key], key
    # closed book on a world of another size than the config default's (tiny, not default): used, not rebuilt
    closed = subprocess.run([sys.executable, "-m", "rest", "eval", "--world", str(out), "--model",
                             str(out / "models" / "L-warm"), "--dataset", "toy-test", "--limit", "3", "--closed-book",
                             "--out", str(tmp_path / "cb")], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env=env)
    assert closed.returncode == 0, closed.stderr[-2000:]
    assert json.loads((tmp_path / "cb" / "score.json").read_text())["searches_per_episode"] == 0


def test_refuses_to_overwrite_a_directory_that_is_not_a_world(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a built toy world"):
        build_world(tmp_path, seed=0, size="tiny")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_base_below_its_skill_gate_stops_the_build_with_one_line(tmp_path, monkeypatch):
    """A gate no tiny base can meet: L trains on through both its extensions, then the build fails naming
    the model, the skill, the accuracy and every step it took, and leaves no world behind."""
    import dataclasses
    import re

    from learner.trainer import TrainConfig
    from toyworld import world as w
    from toyworld.skills import SkillGate, SkillGateError

    tiny = w.RECIPES["tiny"]
    only_l = {part: {"L": getattr(tiny, part)["L"]} for part in ("train", "drills", "finish")}  # S, XS not built
    gated = dataclasses.replace(tiny, **only_l, gates={"L": SkillGate(copy=1.0)}, check_every=40,
                                extend={"L": TrainConfig(max_steps=10, lr=1e-4, batch_size=32, warmup_steps=1)},
                                max_extensions=2)
    monkeypatch.setitem(w.RECIPES, "tiny-gated", gated)
    out = tmp_path / "gated"
    with pytest.raises(SkillGateError) as e:
        build_world(out, 11, "tiny-gated", progress=False)
    assert re.fullmatch(r"L-base did not learn to copy a snippet's sentence into a note: \d+\.\d% of the probe "
                        r"steps right after 60 steps \(its gate: 100%\)", str(e.value))
    assert not out.exists() and not list(tmp_path.glob(".gated.building-*"))

