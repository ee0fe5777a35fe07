"""Connect the driver to Ray: an embedded local cluster by default, or an existing one.

``address=None`` starts a local cluster sized for the run: Ray's CPUs are logical, and
the phases of a generation take turns (samplers sample while the learner idles, the
learner trains while the samplers idle), so the embedded cluster declares at least the
CPUs every actor of the run reserves at once, even on a 2-core machine. ``auto`` (a
``ray start``ed node or a ``ray job submit`` job), ``ray://HOST:10001`` (Ray Client) and
a GCS ``HOST:PORT`` connect to a cluster whose resources are real, so the config must fit it:
``check_fits`` refuses a cluster too small for the actors a run holds at once (a plain
``ray start --head`` on a 2-core laptop declares 2 CPUs; the toy run needs 3.5, and its
learner's placement group would otherwise wait forever for the missing half CPU).
"""

from __future__ import annotations

import math
import os

import ray

from core.config import Config, ConfigError

#: environment every actor of an embedded cluster gets
ACTOR_ENV = {"TOKENIZERS_PARALLELISM": "false", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def reserved(cfg: Config, eval_pools: int) -> dict[str, float]:
    """CPUs and GPUs the run's actors reserve with ``eval_pools`` eval sampler pools alive beside the
    rollout samplers, the search and ranker actors and the learner ranks."""
    r, k, lr = cfg.rest, cfg.ranker, cfg.learner
    pools = 1 + eval_pools
    return {
        "CPU": pools * r.num_samplers * r.sampler_num_cpus + r.num_search_actors * r.search_num_cpus
        + k.num_actors * k.num_cpus + lr.world_size * lr.num_cpus_per_rank,
        "GPU": pools * r.num_samplers * r.sampler_num_gpus + k.num_actors * k.num_gpus
        + lr.world_size * lr.num_gpus_per_rank,
    }


def peak_cpus(cfg: Config) -> float:
    """CPUs reserved when every actor of a run is alive at once (every model's eval pool side by side)."""
    return reserved(cfg, eval_pools=1 + len(cfg.models.students))["CPU"]


def least_resources(cfg: Config) -> dict[str, float]:
    """What the run cannot do without: one model's eval pool at a time (more run side by side only
    when they fit, see ``ReSTLoop._eval_concurrency``)."""
    return reserved(cfg, eval_pools=1)


def check_fits(cfg: Config) -> None:
    """A ConfigError naming what is short if the connected cluster cannot hold ``least_resources``."""
    have = ray.cluster_resources()
    for kind, need in least_resources(cfg).items():
        if need > have.get(kind, 0.0) + 1e-9:
            raise ConfigError(
                f"the cluster has {have.get(kind, 0.0):g} {kind}s but this run holds {round(need, 3):g} at once "
                f"(rollout and eval samplers, search, ranker and learner actors); start the head with "
                f"`ray start --head --num-{kind.lower()}s {math.ceil(round(need, 3))}` (Ray's {kind}s are reservations, "
                f"not cores) or lower rest.sampler_num_{kind.lower()}s / learner.num_{kind.lower()}s_per_rank")


def connect(address: str | None, cfg: Config, dashboard: bool = True) -> str:
    """Start or join Ray; returns a one-line description (with the dashboard address if any)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address is not None and not (address == "auto" or address.startswith("ray://") or _host_port(address)):
        raise ConfigError(f"--address: expected auto, ray://HOST:PORT or a GCS HOST:PORT, got {address!r}")
    if ray.is_initialized():
        return "ray: already initialised in this process"
    if address is None:
        num_cpus = max(os.cpu_count() or 1, math.ceil(peak_cpus(cfg)))
        ctx = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                       runtime_env={"env_vars": ACTOR_ENV}, logging_level="WARNING")
        where = f"embedded local cluster, {num_cpus} logical CPUs"
    else:
        ctx = ray.init(address=address, logging_level="WARNING")
        check_fits(cfg)
        where = f"cluster at {address}"
    url = getattr(ctx, "dashboard_url", None)
    return f"ray: {where}" + (f"; dashboard http://{url}" if url else "")


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()
