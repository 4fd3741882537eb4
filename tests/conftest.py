"""Shared pytest configuration."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile("ci")

# the local S3 server and Ray cluster (session fixtures, loopback only)
from tests.servers import ray_cluster, s3_server  # noqa: E402, F401
