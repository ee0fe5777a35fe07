"""``rest-react plan`` (rest.plan): the GPU config on cluster.yaml fits, a too-small cluster is refused
with one line, and the memory estimates hold against exact parameter counts, the ZeRO formulas and a
measured CPU fit (benchmarks.learner_memory). Nothing here starts Ray, builds a world or needs a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import load_config
from rest.cli import main
from rest.plan import GIB, KNOWN_ARCHITECTURES, Architecture, activation_bytes, plan, zero_states

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIG = str(ROOT / "configs" / "bamboogle_gpu.yaml")
CLUSTER = str(ROOT / "cluster.yaml")
L_ID = "Qwen/Qwen2.5-7B-Instruct"


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline: the plan never depends on what this machine has downloaded."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def run_plan(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


def cluster_file(tmp_path: Path, **worker: object) -> str:
    """cluster.yaml with its GPU worker type changed by ``worker`` (e.g. min_workers, node_config)."""
    doc = yaml.safe_load(Path(CLUSTER).read_text())
    doc["available_node_types"]["gpu_worker"].update(worker)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


# ------------------------------------------------------------ the GPU config on cluster.yaml


def test_gpu_config_fits_cluster_yaml(capsys):
    code, out, err = run_plan(capsys, "--config", GPU_CONFIG, "--cluster", CLUSTER)
    assert code == 0, err
    assert err == ""
    assert "4 x L40S 45 GiB" in out
    assert f"{L_ID}: 7.62B parameters (known-architecture table" in out
    rows = {line.split()[0] for line in out.splitlines() if "  " in line}
    assert {"rollout", "rank", "finetune", "distil", "eval"} <= rows
    sampler = next(line for line in out.splitlines() if line.startswith("rollout   rollout sampler"))
    assert "18.0 GiB = weights (bfloat16) 14.2" in sampler and "KV cache" in sampler  # 0.4 x 45 GiB
    learner = next(line for line in out.splitlines() if line.startswith("finetune  learner rank (L)"))
    assert "ZeRO-3 over 4 ranks" in learner and "optimizer 21.3" in learner  # 12 bytes x 7.62B / 4 ranks
    judge = next(line for line in out.splitlines() if line.startswith("eval      eval judge (vllm)"))
    assert "   1     2   0.5  18.0 GiB = weights (bfloat16) 14.2" in judge  # the L model as Check_Answer judge
    assert "held at once (every group, one eval pool): 38 CPUs, 7 GPUs" in out
    assert "colocated (rest.colocate): 4 GPUs shared, each by a learner rank and 1 rollout sampler(s) asking Ray " \
           "for 0.5 of it" in out
    # colocated, the 4 rollout samplers generate on the learner's 4 GPUs; separate, on 4 x 0.5 GPUs of their own
    use = out.split("GPU-seconds busy over GPU-seconds held, per phase")[1].splitlines()[1:7]
    assert use[0].split() == ["phase", "separate", "colocated", "(this", "run)"]
    assert [line.split() for line in use[1:]] == [
        ["rollout", "2", "of", "9", "(22%)", "4", "of", "7", "(57%)"],
        ["rank", "0.5", "of", "9", "(6%)", "0.5", "of", "7", "(7%)"],
        ["finetune", "4", "of", "9", "(44%)", "4", "of", "7", "(57%)"],
        ["distil", "4", "of", "9", "(44%)", "4", "of", "7", "(57%)"],
        ["eval", "2.5", "of", "9", "(28%)", "2.5", "of", "7", "(36%)"]]
    assert "peak: " in out and "peak on one GPU: " in out
    assert "fits: " in out and "at min_workers (2 nodes)" in out
    import ray

    assert not ray.is_initialized()  # planned, nothing started


def test_config_json_in_the_hf_cache_is_read(empty_hub_cache, capsys):
    """A hub id whose config.json is in the cache is sized from it (here: a 7B with half the layers)."""
    commit = "c" * 40
    repo = empty_hub_cache / f"models--{L_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    fields = dict(KNOWN_ARCHITECTURES[L_ID], num_hidden_layers=14)
    (snapshot / "config.json").write_text(json.dumps(fields))
    p = plan(load_config(GPU_CONFIG), CLUSTER)
    info = next(m for m in p.models if m.ref == L_ID)
    assert info.source == "config.json in the HF cache"
    full = Architecture.from_config(KNOWN_ARCHITECTURES[L_ID])
    assert info.arch.params == full.params - 14 * full.layer_params
    assert not p.refusal


# ------------------------------------------------------------ refusals


def test_too_few_gpus_is_refused_with_one_line(tmp_path, capsys):
    small = cluster_file(tmp_path, min_workers=1, max_workers=1)  # 4 GPUs; the run holds 7
    code, out, err = run_plan(capsys, "--config", GPU_CONFIG, "--cluster", small)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert f"cannot fit {small}" in err and "4 GPUs at most" in err and "7 GPUs" in err
    assert "does not fit" not in out and "fits:" not in out  # no placement was found


def test_too_little_gpu_memory_is_refused_with_one_line(tmp_path, capsys):
    a10g = cluster_file(tmp_path, node_config={"InstanceType": "g5.12xlarge"})  # 4 x 22.5 GiB
    code, out, err = run_plan(capsys, "--config", GPU_CONFIG, "--cluster", a10g)
    assert code == 1
    assert err.count("\n") == 1
    # the first problem: the 7B's bf16 weights exceed 0.4 of an A10G
    assert "rollout sampler (vllm, L)" in err and "exceed gpu_memory_utilization 0.4 x 22.5 GiB" in err
    assert "more)" in err  # the learner rank and the judge too, counted
    assert "does not fit: " in out
    # the same GPUs with 80 GiB each (--gpu-gib overrides the instance table) hold it
    code, out, err = run_plan(capsys, "--config", GPU_CONFIG, "--cluster", a10g, "--gpu-gib", "80")
    assert code == 0, err


def test_an_engine_asking_more_than_its_gpu_share_is_refused(capsys):
    """A 0.5-GPU engine may take at most half of its GPU (the ranker, the eval samplers and the eval judge
    here). A colocated rollout sampler alone on its GPU may take all of it while awake (the learner's turn
    comes later), so it is not among them."""
    code, _, err = run_plan(capsys, "--config", GPU_CONFIG, "--cluster", CLUSTER,
                            "--set", "engine.gpu_memory_utilization=0.85")
    assert code == 1 and err.count("\n") == 1
    assert "ranker (llm-judge, vllm) (Qwen/Qwen2.5-7B-Instruct) needs 38.2 GiB on 0.5 of a GPU" in err
    assert "(and 4 more)" in err  # the eval samplers of L, S and XS, and the eval judge
    assert "rollout sampler" not in err


def test_colocated_samplers_awake_together_must_fit_their_gpu(capsys):
    """Two rollout samplers per shared GPU are awake together: each may take half of it."""
    code, _, err = run_plan(capsys, "--config", GPU_CONFIG, "--cluster", CLUSTER, "--set", "rest.num_samplers=8",
                            "--set", "engine.gpu_memory_utilization=0.6")
    assert code == 1 and err.count("\n") == 1
    assert "rollout sampler (vllm, L) (Qwen/Qwen2.5-7B-Instruct) needs 27.0 GiB on 0.5 of a GPU" in err
    assert "the rollout samplers that share a GPU are awake together" in err


def test_a_config_that_cannot_colocate_says_why_beside_the_separate_column(capsys):
    code, out, err = run_plan(capsys, "--config", GPU_CONFIG, "--cluster", CLUSTER, "--set", "rest.colocate=off",
                              "--set", "rest.num_samplers=2")
    assert code == 0, err
    use = out.split("GPU-seconds busy over GPU-seconds held, per phase")[1].splitlines()
    assert use[1].split() == ["phase", "separate", "(this", "run)", "colocated"]
    assert use[2].split() == ["rollout", "1", "of", "7", "(14%)", "-"]  # the layout before the colocated mode
    assert "colocated: not possible for this config: colocation needs rest.num_samplers (2) to be a multiple " \
           "of learner.world_size (4)" in out


def test_bad_cluster_input_is_one_line(tmp_path, capsys):
    code, _, err = run_plan(capsys, "--config", GPU_CONFIG, "--cluster", str(tmp_path / "missing.yaml"))
    assert code == 2 and err.count("\n") == 1 and "--cluster: file not found" in err
    odd = cluster_file(tmp_path, node_config={"InstanceType": "x9.huge"})
    code, _, err = run_plan(capsys, "--config", GPU_CONFIG, "--cluster", odd)
    assert code == 2 and err.count("\n") == 1
    assert "available_node_types.gpu_worker: instance type x9.huge" in err and "resources" in err
    code, _, err = run_plan(capsys, "--config", GPU_CONFIG, "--gpu-gib", "0")
    assert code == 2 and "--gpu-gib: must be > 0" in err


def test_toy_config_builds_no_world(tmp_path, capsys):
    world = tmp_path / "world"
    code, out, err = run_plan(capsys, "--config", str(ROOT / "configs" / "toy.yaml"),
                              "--set", f"world.dir={world}")
    assert code == 0, err
    assert not world.exists()
    assert f"{world}/models/L-warm: size unknown (world-dependent" in out
    assert "0 GPUs" in out and "fits: the config's own resource counts" in out
    assert "GPU-seconds busy" not in out  # nothing to say without GPUs


# ------------------------------------------------------------ the estimates


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_parameter_count_is_exact(kind):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=300)
    if kind == "qwen2":  # q/k/v biases, an untied head
        config, cls = Qwen2Config(**shape, tie_word_embeddings=False), Qwen2ForCausalLM
    else:
        config, cls = LlamaConfig(**shape, tie_word_embeddings=True), LlamaForCausalLM
    model = cls(config)
    assert Architecture.from_config(config.to_dict()).params == sum(p.numel() for p in model.parameters())


def test_zero_stages_partition_states():
    per_rank = {s: sum(zero_states(10**9, "bf16", s, 4).values()) for s in range(4)}
    assert per_rank == {0: 16e9, 1: 7e9, 2: 5.5e9, 3: 4e9}  # 2 + 2 + 12 bytes, partitioned stage by stage
    assert zero_states(10**9, "fp32", 0, 4) == {"params": 4e9, "grads": 4e9, "optimizer": 8e9}


#: benchmarks.learner_memory's model (9.4M Llama) and its measured step peaks (docs/performance.md)
BENCH_ARCH = Architecture(hidden=256, intermediate=1024, layers=8, heads=4, kv_heads=4, head_dim=64, vocab=4096,
                          tied=True, bias=False, context=1024, model_type="llama")
DOCUMENTED_MIB = {(16, False, "eager"): 6080, (16, False, "sdpa"): 4420, (4, False, "sdpa"): 1153,
                  (4, True, "sdpa"): 378, (1, True, "sdpa"): 115}


def bench_estimate_mib(micro: int, checkpointing: bool, attention: str) -> float:
    """The plan's activation estimate for one benchmark setting: fp32, sequences up to 1,023 tokens, half trained."""
    terms = activation_bytes(BENCH_ARCH, micro, 1023, 512, 4, checkpointing, attention)
    return sum(terms.values()) / 2**20


def test_learner_estimate_against_the_cpu_benchmark():
    from benchmarks.learner_memory import SETTINGS

    estimates = [bench_estimate_mib(*s) for s in SETTINGS]
    assert estimates == sorted(estimates, reverse=True)  # the measured order: each setting saves memory
    assert [DOCUMENTED_MIB[s] for s in SETTINGS] == sorted(DOCUMENTED_MIB.values(), reverse=True)
    for s in SETTINGS:
        assert 0.6 < DOCUMENTED_MIB[s] / bench_estimate_mib(*s) < 1.6, s
    # one fit measured now, in a fresh process (peak RSS is per process)
    done = subprocess.run([sys.executable, "-m", "benchmarks.learner_memory", "4", "1", "sdpa"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["params"] == BENCH_ARCH.params
    assert 0.6 < measured["step_peak_mib"] / bench_estimate_mib(4, True, "sdpa") < 1.6


def test_learner_memory_grows_with_micro_batch_and_shrinks_with_checkpointing():
    arch = Architecture.from_config(KNOWN_ARCHITECTURES[L_ID])
    small, big = (activation_bytes(arch, m, 4096, 257, 2, True, zero3=True)["activations"] for m in (1, 2))
    assert big == pytest.approx(2 * small)
    plain = activation_bytes(arch, 2, 4096, 257, 2, False, zero3=True)["activations"]
    assert plain > 10 * big  # 28 layers' activations against their inputs and one layer
    assert activation_bytes(arch, 2, 4096, 257, 2, True, zero3=True)["logits"] / GIB < 2
