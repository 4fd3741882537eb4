"""Servers the tests start themselves, on loopback only, once per test session (per xdist worker):
an S3-compatible object store (moto's server mode) and a two-worker Ray cluster.

Tests that use the Ray cluster are marked ``xdist_group("ray")`` so that one pytest worker runs them
all (``make test`` passes ``--dist loadgroup``) and a single cluster starts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# Ray takes 127.0.0.1 as the node's address in this mode, so every server it starts (GCS, raylet,
# workers) listens on loopback; set before ray is imported anywhere in the test process.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

#: Mark for tests that use the shared Ray cluster.
ray_group = pytest.mark.xdist_group("ray")


@dataclass(frozen=True)
class S3Server:
    """The local S3-compatible server: its endpoint and a way to make fresh buckets."""

    endpoint: str
    client: Any

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in out.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 (a free port), and the AWS variables that point clients at it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        try:
            yield S3Server(endpoint=endpoint, client=client)
        finally:
            server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_server: S3Server) -> Iterator[str]:
    """A local Ray cluster with two worker CPUs (started after the S3 variables are set, so its
    workers reach the S3 server too); yields its address for ``--address``."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=160 * 1024**2,
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
