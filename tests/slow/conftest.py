"""Fixtures shared by the slow suites that run the ReST driver on the tiny world's L-warm.

A module that needs a differently configured cluster defines its own ``cluster``
fixture, which takes precedence over this one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import ray

from rest.cluster import ACTOR_ENV

sys.path.insert(0, str(Path(__file__).parent))
from rest_fixtures import warm_policy  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="module")
def policy() -> Path:
    """The tiny world's L-warm, the smoke config's policy (the world built once, cached)."""
    return warm_policy()


@pytest.fixture(scope="module")
def cluster(policy):
    """A local 4-CPU Ray cluster whose actors get the project's environment; yields its GCS address."""
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": ACTOR_ENV}, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A fresh runs/ directory per module."""
    return tmp_path_factory.mktemp("runs")
