"""cluster.yaml validates against Ray's own autoscaler schema (offline: no cloud calls)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

# a private API (seen in Ray 2.60): the checks `ray up` runs before it touches a cloud
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_a_valid_autoscaler_config(cluster):
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and "gpu_worker" in types
    assert types["gpu_worker"]["min_workers"] >= 1
    assert any("pip install" in c and ".[vllm]" in c for c in prepared["setup_commands"])
    head = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--metrics-export-port" in head


@pytest.mark.parametrize("where", ["top", "node_type"])
def test_an_unknown_key_is_rejected(cluster, where):
    import jsonschema

    bad = copy.deepcopy(cluster)
    if where == "top":
        bad["gpu_count"] = 8
    else:
        bad["available_node_types"]["gpu_worker"]["gpus"] = 4
    with pytest.raises(jsonschema.ValidationError, match="Additional properties are not allowed"):
        validate_config(prepare_config(bad))


def test_reservations_of_the_toy_run_at_its_peak_and_at_its_least():
    """2 samplers x 0.5 per pool, search 0.25, ranker 0.25, 2 learner ranks x 0.5 (configs/toy.yaml)."""
    from core.config import load_config
    from rest.cluster import least_resources, peak_cpus

    cfg = load_config(ROOT / "configs" / "toy.yaml", ["models.students={S: a, XS: b}"])
    assert least_resources(cfg) == {"CPU": 3.5, "GPU": 0.0}  # rollout pool + one eval pool
    assert peak_cpus(cfg) == 5.5  # rollout pool + an eval pool for each of L, S and XS
    gpus = load_config(ROOT / "configs" / "toy.yaml", ["rest.sampler_num_gpus=0.5", "learner.num_gpus_per_rank=1",
                                                      "rest.colocate=off"])
    assert least_resources(gpus)["GPU"] == 4.0  # colocated: 3 (tests/test_colocation_on_cpu.py)


def test_every_node_mounts_the_run_storage_and_the_comments_match_the_config(cluster):
    """The shared storage is mounted by a setup command (run on every node); the GPU counts in the
    comments are the ones the GPU config reserves (``rest.cluster``)."""
    from core.config import load_config
    from rest.cluster import least_resources, reserved

    setup = " ".join(cluster["setup_commands"])
    assert "mount -t nfs4" in setup and "/mnt/rest-react" in setup and "HF_HOME=/mnt/rest-react/hf" in setup
    text = (ROOT / "cluster.yaml").read_text()
    assert "--runs-dir /mnt/rest-react/runs" in text
    cfg = load_config(ROOT / "configs" / "bamboogle_gpu.yaml")
    least, peak = least_resources(cfg)["GPU"], reserved(cfg, eval_pools=1 + len(cfg.models.students))["GPU"]
    assert f"{least:g} GPUs (" in text and f"({peak:g} when every" in text
    workers = cluster["available_node_types"]["gpu_worker"]["min_workers"]
    assert workers * 4 >= least  # g6e.12xlarge: 4 GPUs each
