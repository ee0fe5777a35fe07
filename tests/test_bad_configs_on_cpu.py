"""Fifty-odd malformed configs through the real ``rest-react run`` entry point: exit 2, one line naming the key.

Each case is a config file (or a ``--set``) with one thing wrong: an unknown key or
section, a wrong type, a missing file or model dir, a negative size, a bad enum, a
non-finite number, bad YAML, an empty or non-UTF-8 file, a section of the wrong
type, a duplicated key. ``rest.cli.main`` runs in-process (two cases also go
through a real ``python -m rest`` subprocess) and must return 2 with exactly one
stderr line that names the file and the offending key, print no traceback and
create nothing under ``--runs-dir``.

Every call also passes ``--address not-an-address``: ``run`` checks the address only
after the config and the run dir, so a config the validator wrongly accepted fails
at once with an error naming ``--address`` (the test then fails on the key) instead
of starting a Ray cluster.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rest.cli import main

ROOT = Path(__file__).resolve().parents[1]
GUARD = ["--address", "not-an-address"]

#: (id, config text, expected words in the message; the first is the key)
CASES: list[tuple[str, str, tuple[str, ...]]] = [
    # unknown keys and sections
    ("typo-key", "agent:\n  k_sample: 4\n", ("agent.k_sample", "unknown key")),
    ("typo-section", "agnt:\n  k_samples: 4\n", ("agnt", "unknown section")),
    ("learner-typo", "learner:\n  zero: 2\n", ("learner.zero", "unknown key")),
    ("rest-typo", "rest:\n  generation: 2\n", ("rest.generation", "unknown key")),
    ("source-not-a-section", "source: mine.yaml\n", ("source", "unknown section")),
    ("numeric-key", "agent:\n  1: 2\n", ("agent.1", "unknown key")),
    ("world-typo", "world:\n  sed: 3\n", ("world.sed", "unknown key")),
    # wrong types
    ("int-as-word", "agent:\n  k_samples: four\n", ("agent.k_samples", "integer")),
    ("int-as-float", "agent:\n  k_samples: 2.5\n", ("agent.k_samples", "integer")),
    ("int-as-bool", "agent:\n  k_samples: true\n", ("agent.k_samples", "integer")),
    ("float-as-word", "agent:\n  temperature: hot\n", ("agent.temperature", "number")),
    ("bool-as-int", "agent:\n  self_checks: 1\n", ("agent.self_checks", "true or false")),
    ("str-as-int", "engine:\n  model: 123\n", ("engine.model", "string")),
    ("str-as-list", "engine:\n  model: [a, b]\n", ("engine.model", "string")),
    ("list-as-int", "rest:\n  trajectories_per_question: 2\n", ("rest.trajectories_per_question", "list")),
    ("list-item", "rest:\n  trajectories_per_question: [1, two]\n", ("rest.trajectories_per_question", "integer")),
    ("dict-as-list", "models:\n  students: [S, XS]\n", ("models.students", "mapping")),
    ("dict-value", "models:\n  students: {S: 3}\n", ("models.students", "string")),
    ("list-as-str", "rest:\n  eval_datasets: toy-test\n", ("rest.eval_datasets", "list")),
    ("null-float", "learner:\n  lr: null\n", ("learner.lr", "number")),
    ("float-with-unit", "search:\n  timeout_s: 10s\n", ("search.timeout_s", "number")),
    ("seed-float", "agent:\n  seed: 1.0\n", ("agent.seed", "integer")),
    # missing files and model dirs
    ("missing-corpus", "search:\n  corpus: /no/such/corpus.jsonl\n", ("search.corpus", "not found")),
    ("missing-rel-corpus", "search:\n  corpus: data/nope.jsonl.gz\n", ("search.corpus", "not found")),
    ("missing-policy", "models:\n  policy: /no/such/model\n", ("models.policy", "not found")),
    ("missing-student", "models:\n  students: {S: ./no/such/student}\n", ("models.students", "not found")),
    ("missing-engine-model", "engine:\n  model: /no/such/engine-model\n", ("engine.model", "not found")),
    ("missing-train-set", "rest:\n  train_dataset: /no/such/train.jsonl\n", ("rest.train_dataset", "nor a file")),
    ("unknown-train-set", "rest:\n  train_dataset: toy-tarin\n", ("rest.train_dataset", "not a known dataset")),
    ("missing-eval-set", "rest:\n  eval_datasets: [toy-test, nope.jsonl]\n", ("rest.eval_datasets", "nor a file")),
    # negative or zero sizes, out of range
    ("zero-topk", "agent:\n  topk: 0\n", ("agent.topk", ">= 1")),
    ("negative-budget", "agent:\n  search_budget: -1\n", ("agent.search_budget", ">= 0")),
    ("negative-tokens", "agent:\n  max_new_tokens: -5\n", ("agent.max_new_tokens", ">= 1")),
    ("negative-batch", "engine:\n  max_batch: -1\n", ("engine.max_batch", ">= 1")),
    ("zero-world-size", "learner:\n  world_size: 0\n", ("learner.world_size", ">= 1")),
    ("negative-batch-size", "learner:\n  batch_size: -8\n", ("learner.batch_size", ">= 1")),
    ("zero-samplers", "rest:\n  num_samplers: 0\n", ("rest.num_samplers", ">= 1")),
    ("negative-task", "rest:\n  questions_per_task: -1\n", ("rest.questions_per_task", ">= 1")),
    ("zero-timeout", "rest:\n  call_timeout_s: 0\n", ("rest.call_timeout_s", ">= 1")),
    ("zero-tpq", "rest:\n  trajectories_per_question: [2, 0]\n", ("rest.trajectories_per_question", ">= 1")),
    ("empty-tpq", "rest:\n  trajectories_per_question: []\n", ("rest.trajectories_per_question", "empty")),
    ("negative-cpus", "ranker:\n  num_cpus: -0.5\n", ("ranker.num_cpus", ">= 0")),
    ("negative-kv", "engine:\n  kv_cache_gib: -1\n", ("engine.kv_cache_gib", ">= 0.1")),
    ("zero-stage-4", "learner:\n  zero_stage: 4\n", ("learner.zero_stage", "<= 3")),
    ("negative-limit", "eval:\n  limit: -1\n", ("eval.limit", ">= 0")),
    # non-finite numbers
    ("nan-temperature", "agent:\n  temperature: .nan\n", ("agent.temperature", "finite")),
    ("inf-timeout", "rest:\n  call_timeout_s: .inf\n", ("rest.call_timeout_s", "finite")),
    # bad enums and URLs
    ("engine-backend", "engine:\n  backend: tensorrt\n", ("engine.backend", "one of")),
    ("ranker-kind", "ranker:\n  kind: human\n", ("ranker.kind", "one of")),
    ("precision", "learner:\n  precision: fp8\n", ("learner.precision", "one of")),
    ("search-backend", "search:\n  backend: google\n", ("search.backend", "one of")),
    ("world-size", "world:\n  size: huge\n", ("world.size", "one of")),
    ("continue-with", "rest:\n  continue_with: random\n", ("rest.continue_with", "one of")),
    ("transport", "learner:\n  transport: pigeon\n", ("learner.transport", "one of")),
    ("prompt-style", "agent:\n  prompt_style: chat\n", ("agent.prompt_style", "one of")),
    ("url-scheme", "search:\n  backend: http\n  url: ftp://127.0.0.1/retrieve\n", ("search.url", "http://")),
    # sections of the wrong type
    ("section-int", "agent: 5\n", ("agent", "mapping")),
    ("section-list", "agent: [k_samples, 4]\n", ("agent", "mapping")),
    ("section-str", "learner: fast\n", ("learner", "mapping")),
    # duplicates
    ("duplicate-key", "agent:\n  k_samples: 2\n  k_samples: 3\n", ("k_samples", "duplicate key", "line 3")),
    ("duplicate-section", "agent: {}\nengine: {}\nagent: {}\n", ("agent", "duplicate key", "line 3")),
    # file-level problems
    ("bad-yaml", "agent: {k_samples: [4\n", ("", "not valid YAML")),
    ("tab-indent", "agent:\n\tk_samples: 4\n", ("", "not valid YAML", "line 2")),
    ("top-level-list", "- agent\n- engine\n", ("", "mapping of sections", "list")),
    ("top-level-str", "just words\n", ("", "mapping of sections", "str")),
    ("empty-file", "", ("models.policy", "required")),
    ("only-comments", "# nothing here\n", ("models.policy", "required")),
]

#: (id, file bytes) for what YAML text cannot express
BINARY = [("not-utf8", b"agent:\n  k_samples: \xff\xfe4\n", ("", "not UTF-8")),
          ("nul-bytes", b"\x00\x01\x02", ("", "not"))]

#: (id, valid config text, --set overrides, expected words)
OVERRIDES = [
    ("set-bad-value", ["agent.k_samples=zero"], ("agent.k_samples", "integer")),
    ("set-unknown-section", ["nosuch.key=1"], ("nosuch", "unknown section")),
    ("set-no-dot", ["agent=3"], ("--set agent=3", "section.key=value")),
    ("set-no-equals", ["agent.k_samples"], ("--set agent.k_samples", "section.key=value")),
    ("set-negative", ["learner.world_size=-2"], ("learner.world_size", ">= 1")),
]


def _run_cli(args: list[str], runs: Path, capsys) -> tuple[int, list[str]]:
    code = main(["run", *args, "--runs-dir", str(runs), "--name", "bad", "--no-progress", *GUARD])
    err = capsys.readouterr().err
    return code, err.strip().splitlines()


def _check(code: int, lines: list[str], path: Path | None, words: tuple[str, ...], runs: Path) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in line, line
    if path is not None:
        assert str(path) in line, line
    key, *rest = words
    assert key in line and "--address" not in line, line
    for w in rest:
        assert w in line, line
    assert not (runs / "bad").exists(), "a rejected config must not leave a run dir"


def test_there_are_at_least_fifty_cases():
    assert len(CASES) + len(BINARY) + len(OVERRIDES) >= 50


@pytest.mark.parametrize("text,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_exits_2_naming_the_key(tmp_path, capsys, monkeypatch, text, words):
    monkeypatch.chdir(ROOT)  # relative paths (data/...) resolve as in a user's checkout
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, lines = _run_cli(["--config", str(path)], tmp_path / "runs", capsys)
    _check(code, lines, path, words, tmp_path / "runs")


@pytest.mark.parametrize("data,words", [c[1:] for c in BINARY], ids=[c[0] for c in BINARY])
def test_binary_config_exits_2(tmp_path, capsys, data, words):
    path = tmp_path / "bad.yaml"
    path.write_bytes(data)
    code, lines = _run_cli(["--config", str(path)], tmp_path / "runs", capsys)
    _check(code, lines, path, words, tmp_path / "runs")


@pytest.mark.parametrize("sets,words", [c[1:] for c in OVERRIDES], ids=[c[0] for c in OVERRIDES])
def test_bad_override_exits_2(tmp_path, capsys, sets, words):
    path = tmp_path / "ok.yaml"
    path.write_text("agent:\n  k_samples: 2\n")
    args = ["--config", str(path), *sum((["--set", s] for s in sets), [])]
    code, lines = _run_cli(args, tmp_path / "runs", capsys)
    _check(code, lines, None, words, tmp_path / "runs")


def test_missing_and_directory_config_files(tmp_path, capsys):
    for path in (tmp_path / "nope.yaml", tmp_path):
        code, lines = _run_cli(["--config", str(path)], tmp_path / "runs", capsys)
        _check(code, lines, path, ("", "config file not found"), tmp_path / "runs")


@pytest.mark.parametrize("case", ["typo-key", "duplicate-key"])
def test_bad_config_through_a_real_subprocess(tmp_path, case):
    text, words = next(c[1:] for c in CASES if c[0] == case)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "rest", "run", "--config", str(path), "--runs-dir", str(runs), "--name", "bad", *GUARD],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    _check(proc.returncode, proc.stderr.strip().splitlines(), path, words, runs)
    assert proc.stdout == ""

