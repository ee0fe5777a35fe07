"""Connect the driver to Ray: an embedded local cluster by default, or an existing one.

``address=None`` starts a local cluster sized for the run: Ray's CPUs are logical, and
the phases of a generation take turns (samplers sample while the learner idles, the
learner trains while the samplers idle), so the embedded cluster declares at least the
CPUs every actor of the run reserves at once, even on a 2-core machine. ``auto`` (a
``ray start``ed node or a ``ray job submit`` job), ``ray://HOST:10001`` (Ray Client) and
a GCS ``HOST:PORT`` connect to a cluster whose resources are real, so the config must fit it.
"""

from __future__ import annotations

import math
import os

import ray

from rest.config import Config, ConfigError

#: environment every actor of an embedded cluster gets
ACTOR_ENV = {"TOKENIZERS_PARALLELISM": "false", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def peak_cpus(cfg: Config) -> float:
    """CPUs reserved when every actor of a run is alive at once (rollout samplers + every model's eval samplers)."""
    r = cfg.rest
    models = 1 + len(cfg.models.students)
    return ((1 + models) * r.num_samplers * r.sampler_num_cpus + r.num_search_actors * r.search_num_cpus
            + cfg.ranker.num_actors * cfg.ranker.num_cpus + cfg.learner.world_size * cfg.learner.num_cpus_per_rank)


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
        where = f"cluster at {address}"
    url = getattr(ctx, "dashboard_url", None)
    return f"ray: {where}" + (f"; dashboard http://{url}" if url else "")


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()
