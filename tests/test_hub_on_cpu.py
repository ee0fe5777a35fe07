"""Models by hub id or local directory (core.hub), with no hub: a local dir, a model placed in a
temporary Hugging Face cache laid out as huggingface_hub lays it out, and the offline-missing error."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import scan_cache_dir

from actors.engines import make_engine
from actors.engines.hf import HFEngine
from core.config import ConfigError, EngineConfig, load_config
from core.hub import ModelUnavailable, is_local, model_references, pin_revisions, resolve_model
from rest.backends import build_engine
from rest.cli import main
from rest.runs import open_run
from toyworld.modelzoo import MODEL_SIZES, init_model, train_tokenizer

torch.set_num_threads(1)

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hotpotqa_train_sample.jsonl"
REPO_ID = "test-org/tiny-llama"
OLD, NEW = "a" * 40, "b" * 40


def place_in_hf_cache(model_dir: Path, cache: Path, repo_id: str, commit: str, main: bool = True) -> Path:
    """Put ``model_dir``'s files into ``cache`` as ``snapshot_download`` leaves them: content-addressed
    blobs, a ``snapshots/<commit>/`` of relative symlinks to them, and ``refs/main`` naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for f in sorted(p for p in model_dir.iterdir() if p.is_file()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo / "blobs" / digest)
        os.symlink(Path("..", "..", "blobs", digest), snapshot / f.name)
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = tmp_path_factory.mktemp("tok")
    with CORPUS.open() as f:
        train_tokenizer([line for _, line in zip(range(300), f, strict=False)], tok, vocab_size=512)
    return init_model(dict(MODEL_SIZES["tiny"], initializer_range=0.3), tok, tmp_path_factory.mktemp("m"), seed=1)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, model_dir) -> Path:
    """An offline HF cache holding REPO_ID at two commits, ``main`` at NEW (the same weights)."""
    cache = tmp_path / "hf-cache"
    place_in_hf_cache(model_dir, cache, REPO_ID, OLD, main=False)
    place_in_hf_cache(model_dir, cache, REPO_ID, NEW)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def write_config(path: Path, policy: str, **sections) -> Path:
    raw = {"models": {"policy": policy}, **sections}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_local_and_hub_references_are_told_apart(tmp_path):
    assert is_local(str(tmp_path)) and is_local("./x") and is_local("~/m") and is_local("a/b/c") and is_local("m/")
    assert not is_local("Qwen/Qwen2.5-7B-Instruct") and not is_local("gpt2")
    m = resolve_model(str(tmp_path))
    assert m.path == tmp_path and m.revision is None and not m.from_hub
    with pytest.raises(ModelUnavailable, match=f"model dir not found: {tmp_path / 'none'}"):
        resolve_model(str(tmp_path / "none"))


def test_the_cache_layout_is_the_one_huggingface_hub_reads(hub_cache):
    (repo,) = scan_cache_dir(hub_cache).repos
    assert repo.repo_id == REPO_ID and {r.commit_hash for r in repo.revisions} == {OLD, NEW}
    assert {f.file_name for r in repo.revisions for f in r.files} >= {"config.json", "model.safetensors"}


def test_a_hub_id_resolves_through_the_cache_at_main_or_at_a_pinned_commit(hub_cache):
    m = resolve_model(REPO_ID)
    assert m.revision == NEW and m.path == hub_cache / "models--test-org--tiny-llama" / "snapshots" / NEW
    assert resolve_model(REPO_ID, OLD).path.name == OLD  # a pinned run keeps its commit when main moves


def test_engines_load_a_hub_id_like_its_local_dir(hub_cache, model_dir):
    local = HFEngine(model_dir, threads=1)
    hub = make_engine(EngineConfig(model=REPO_ID), revision=OLD)
    assert hub.model_dir.name == OLD
    a = local.generate(["Who founded the company"], n=1, temperature=0.0, max_new_tokens=8)
    b = hub.generate(["Who founded the company"], n=1, temperature=0.0, max_new_tokens=8)
    assert a == b  # same text, token count and log-likelihood


def test_a_run_records_each_hub_models_commit_in_its_config_yaml(hub_cache, model_dir, tmp_path):
    cfg_path = write_config(tmp_path / "c.yaml", REPO_ID, models={"policy": REPO_ID, "students": {"S": str(model_dir)}},
                            ranker={"kind": "llm-judge", "judge_model": REPO_ID})
    cfg = load_config(cfg_path)
    assert model_references(cfg) == {"models.policy": REPO_ID, "models.students.S": str(model_dir),
                                     "ranker.judge_model": REPO_ID}
    run, resolved = open_run(tmp_path / "runs", "r", cfg, resume=False)
    saved = yaml.safe_load(run.config.read_text())
    assert saved["models"]["revisions"] == {REPO_ID: NEW}  # local dirs are not listed
    assert saved["models"]["policy"] == REPO_ID and saved["engine"]["model"] == REPO_ID  # the fields stay as given
    assert build_engine(resolved).model_dir.name == NEW
    # main moves on: the resumed run keeps loading the commit it started with
    (hub_cache / "models--test-org--tiny-llama" / "refs" / "main").write_text(OLD)
    _, again = open_run(tmp_path / "runs", "r", load_config(cfg_path), resume=True)
    assert again.models.revisions == {REPO_ID: NEW} and build_engine(again).model_dir.name == NEW


def test_revisions_must_be_commits(tmp_path):
    with pytest.raises(ConfigError, match="models.revisions: must be a 40-hex-digit commit hash, got 'main'"):
        load_config(None, ["models.revisions={a/b: main}"])


def test_offline_with_a_model_missing_is_one_line_naming_it_and_the_download_command(hub_cache, tmp_path, capsys):
    cfg_path = write_config(tmp_path / "gpu.yaml", "test-org/not-cached")
    with pytest.raises(ModelUnavailable, match=f"model test-org/not-cached .* `rest-react download --config {cfg_path}`"):
        pin_revisions(load_config(cfg_path))
    assert main(["run", "--config", str(cfg_path), "--runs-dir", str(tmp_path / "runs"), "--name", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test-org/not-cached" in err and f"rest-react download --config {cfg_path}" in err
    assert not (tmp_path / "runs" / "x" / "config.yaml").exists()  # refused before anything was written
    assert main(["download", "--config", str(cfg_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test-org/not-cached" in err and "HF_HUB_OFFLINE=0 rest-react download" in err


def test_download_offline_checks_every_model_a_config_names(hub_cache, model_dir, tmp_path, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", REPO_ID, models={"policy": REPO_ID, "students": {"S": str(model_dir)}},
                            eval={"judge": "llm", "judge_model": REPO_ID})
    assert main(["download", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert f"{REPO_ID}: {hub_cache}" in out and f"commit {NEW}; models.policy, eval.judge_model)" in out
    assert f"{model_dir}: {model_dir} (local directory; models.students.S)" in out
    assert "2 of 2 models ready" in out


def test_transformers_loads_the_hub_id_from_the_same_cache_offline(hub_cache, tmp_path):
    """What the learner ranks do with a hub id (``from_pretrained``), in a fresh process whose
    HF_HUB_CACHE is the run's: the model the run checked at its start loads with no hub."""
    code = ("from transformers import AutoModelForCausalLM, AutoTokenizer; "
            f"AutoTokenizer.from_pretrained({REPO_ID!r}); "
            f"m = AutoModelForCausalLM.from_pretrained({REPO_ID!r}, use_safetensors=True); "
            "print(m.config._name_or_path, m.num_parameters())")
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == REPO_ID


def test_eval_with_a_judge_missing_offline_stops_before_the_agent_runs(hub_cache, model_dir, capsys):
    code = main(["eval", "--model", REPO_ID, "--dataset", "bamboogle", "--closed-book",
                 "--judge-model", "test-org/judge-not-cached"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "model test-org/judge-not-cached is neither" in err
