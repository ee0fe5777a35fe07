"""The colocated mode's config and arithmetic (``rest.colocate``, ``rest.colocation``): which configs turn
it on, which it refuses with one line, the GPU shares of a bundle and what the run reserves. Nothing here
starts Ray; tests/slow/test_colocation.py places and drives real actors on logical GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Config, ConfigError, LearnerConfig, RestConfig, load_config
from rest.cluster import least_resources, reserved
from rest.colocation import bundle_spec, gpu_share

TOY = Path(__file__).resolve().parents[1] / "configs" / "toy.yaml"
GPUS = ["rest.sampler_num_gpus=0.5", "learner.num_gpus_per_rank=1"]


def test_auto_is_on_exactly_when_samplers_and_learner_ranks_ask_for_gpus():
    assert not load_config(None).colocated  # the CPU default
    assert not load_config(None, ["rest.sampler_num_gpus=0.5"]).colocated
    assert not load_config(None, ["learner.num_gpus_per_rank=1"]).colocated
    assert load_config(None, GPUS).colocated
    assert not load_config(None, [*GPUS, "rest.colocate=off"]).colocated
    assert load_config(None, ["learner.num_gpus_per_rank=1", "rest.colocate=on"]).colocated


@pytest.mark.parametrize("sets, needs", [
    (["rest.colocate=on"], "learner.num_gpus_per_rank 1"),  # CPU learner ranks: nothing to share
    (["rest.sampler_num_gpus=0.5", "learner.num_gpus_per_rank=2"], "learner.num_gpus_per_rank 1"),
    ([*GPUS, "rest.num_samplers=3"], "multiple of learner.world_size (2)"),
])
def test_a_layout_that_cannot_share_gpus_is_one_line_naming_the_key(sets, needs):
    with pytest.raises(ConfigError) as e:
        load_config(None, sets)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("<defaults>: rest.colocate: ") and needs in msg
    assert "rest.colocate: off" in msg  # the way out is named
    assert ("auto turns it on" in msg) == ("rest.colocate=on" not in sets)


def test_a_bad_value_names_the_key_and_bare_yaml_on_off_mean_on_off(tmp_path):
    with pytest.raises(ConfigError, match=r"rest\.colocate: .*'auto'.*'on'.*'off'"):
        load_config(None, ["rest.colocate=sometimes"])
    path = tmp_path / "c.yaml"
    path.write_text("rest:\n  colocate: off\n  sampler_num_gpus: 0.5\nlearner:\n  num_gpus_per_rank: 1\n")
    cfg = load_config(path)  # YAML 1.1 reads a bare off as false
    assert cfg.rest.colocate == "off" and not cfg.colocated


def test_constructed_configs_are_checked_too():
    with pytest.raises(ConfigError, match="rest.colocate: colocation needs learner.num_gpus_per_rank 1"):
        Config(rest=RestConfig(colocate="on"))
    cfg = Config(rest=RestConfig(colocate="on", num_samplers=4), learner=LearnerConfig(num_gpus_per_rank=1))
    assert cfg.colocated


@pytest.mark.parametrize("per_gpu", range(1, 9))
def test_a_bundles_shares_fit_its_gpu(per_gpu):
    share = gpu_share(per_gpu)
    assert (1 + per_gpu) * share <= 1.0 and (1 + per_gpu) * share > 0.999
    assert round(share, 4) == share  # Ray's resource grain


def test_the_shared_gpus_replace_the_rollout_samplers_and_learner_gpus():
    """configs/toy.yaml on GPUs: 2 samplers x 0.5 GPU per pool, 2 learner ranks x 1 GPU."""
    separate = load_config(TOY, [*GPUS, "rest.colocate=off"])
    shared = load_config(TOY, GPUS)
    assert least_resources(separate)["GPU"] == 4.0  # rollout 1 + eval pool 1 + learner 2
    assert least_resources(shared)["GPU"] == 3.0  # the learner's 2, shared with the rollout; eval pool 1
    assert least_resources(shared)["CPU"] == least_resources(separate)["CPU"]  # the bundles carry the same CPUs
    assert reserved(shared, eval_pools=0)["GPU"] == 2.0
    four = load_config(TOY, [*GPUS, "rest.num_samplers=4"])
    assert bundle_spec(four) == {"GPU": 1.0, "CPU": four.learner.num_cpus_per_rank + 2 * four.rest.sampler_num_cpus}
