"""The Ray backend against the local one, value for value, on traces read from the local S3 server.

One two-worker Ray cluster serves every test here (``ray_cluster``, a session fixture); the tests
run on one pytest worker (``xdist_group``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.factories import write_routing_trace
from tests.replay._traces import write_ranked_trace
from tests.servers import S3Server, ray_group
from tracekit.backends import get_backend
from tracekit.errors import MissingDependencyError, NotATraceError, UnknownNameError, UsageError
from tracekit.replay import Deployment, Precision, grid, replay, run_sweep

pytestmark = ray_group

#: Columns that differ between any two runs (a new id and time per run).
RUN_ONLY = ("run_id", "created_at")


def _trace(s3: S3Server | None, *, steps: int = 6, seed: int = 0, at: str | None = None) -> str:
    """A 4-rank decode trace of 8 experts, top-2, 3 MoE layers, 8 tokens per rank and step, on S3
    (or at local path ``at``), with small part files (many row groups)."""
    rng = np.random.default_rng(seed)
    skew = rng.dirichlet(np.full(8, 0.6))
    ids = np.stack([rng.choice(8, size=2, replace=False, p=skew) for _ in range(4 * steps * 3 * 8)])
    uri = at if s3 is None else f"s3://{s3.bucket()}/traces/ep4"
    assert uri is not None
    write_ranked_trace(uri, ids.reshape(4, steps, 3, 8, 2), num_experts=8, rows_per_part=24)  # type: ignore[arg-type]
    return uri


def _same_tables(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if name == "replay_run":
            x, y = x.drop(RUN_ONLY), y.drop(RUN_ONLY)
        assert x.height > 0, name
        assert x.equals(y), name


@pytest.mark.parametrize("redundant", [0, 4])
def test_replay_on_ray_equals_local_from_s3(
    s3_server: S3Server, ray_cluster: str, monkeypatch: pytest.MonkeyPatch, redundant: int
) -> None:
    import tracekit.replay.counts as counts

    uri = _trace(s3_server)
    monkeypatch.setattr(counts, "WINDOW_ROWS", 200)  # several windows: several tasks
    dep = Deployment(hw="h200-sxm", ep=4, batch_per_gpu=4, redundant=redundant)
    with get_backend("local") as local_backend:
        here = replay(uri, dep, backend=local_backend)
    with get_backend("ray") as ray_backend:
        there = replay(uri, dep, backend=ray_backend)
        stats = ray_backend.stats
    # a task per window of steps, as many as the local replay counted
    assert stats.tasks == local_backend.stats.tasks > 1 and stats.result_bytes > 0
    _same_tables(here.all_tables(), there.all_tables())
    assert here.summary.to_dict() == there.summary.to_dict()


def test_sweep_of_64_points_on_ray_equals_local_from_s3(s3_server: S3Server, ray_cluster: str) -> None:
    # one rank, one part file per table: each of the 128 replays opens the trace on the S3 server
    rng = np.random.default_rng(1)
    skew = rng.dirichlet(np.full(8, 0.6))
    ids = np.stack([rng.choice(8, size=2, replace=False, p=skew) for _ in range(4 * 2 * 32)])
    uri = f"s3://{s3_server.bucket()}/traces/r1"
    write_routing_trace(uri, ids.reshape(4, 2, 32, 2))  # type: ignore[arg-type]
    points = grid(
        Deployment(hw="h200-sxm"),
        hws=["h200-sxm", "gb200-nvl72"],
        eps=[1, 2, 4, 8],
        batches=[1, 2, 4, 8],
        precisions=[Precision(), Precision.parse(["experts=fp4"])],
    )
    assert len(points) == 64
    here = run_sweep(uri, points, jobs=1)
    with get_backend("ray") as ray_backend:
        there = run_sweep(uri, points, backend=ray_backend)
        assert ray_backend.stats.tasks == 64
    assert here.height == 64 and here["fits"].sum() > 32
    assert here.equals(there)


def test_stats_place_and_compare_on_ray_equal_local(tmp_path: Path, ray_cluster: str) -> None:
    """The trace on a local path (the workers share this machine's filesystem): many replays each."""
    from tracekit.replay import compare_at_interactivity
    from tracekit.replay.whatif import placement_whatif
    from tracekit.stats import compute_stats

    uri = _trace(None, steps=5, seed=2, at=str(tmp_path / "ep4"))
    with get_backend("ray") as ray_backend:
        a, b = compute_stats(uri), compute_stats(uri, backend=ray_backend)
        for name, df in a.tables().items():
            assert df.height > 0 and df.equals(b.tables()[name]), name
        kw = {"num_ranks": 4, "policies": ("contiguous", "greedy"), "num_redundant": 4, "hw": "h200-sxm"}
        pa_, pb = placement_whatif(uri, **kw), placement_whatif(uri, backend=ray_backend, **kw)  # type: ignore[arg-type]
        assert [o.replayed for o in pa_.outcomes] == [o.replayed for o in pb.outcomes]
        assert all(o.replayed is not None for o in pb.outcomes)
        assert np.array_equal(pa_.loads.loads, pb.loads.loads)
        systems = [Deployment(hw="h200-sxm"), Deployment(hw="gb200-nvl72")]
        ca = compare_at_interactivity(uri, systems, tokens_per_s_per_user=5.0)
        cb = compare_at_interactivity(uri, systems, tokens_per_s_per_user=5.0, backend=ray_backend)
        assert ca.to_dict() == cb.to_dict()
        assert all(s.deployment is not None for s in cb.systems)


def test_task_errors_come_back_as_tracekit_errors(ray_cluster: str) -> None:
    from tracekit.trace.loads import part_loads

    with get_backend("ray") as ray_backend, pytest.raises(NotATraceError, match="no such file"):
        ray_backend.map(part_loads, [("/nonexistent/trace", "routing", ())])


def test_cli_replay_joins_a_running_cluster_by_address(
    tmp_path: Path, s3_server: S3Server, ray_cluster: str
) -> None:
    """A second driver (another process) joins the cluster with --address and replays from S3; its
    summary equals the local replay's."""
    uri = _trace(s3_server, seed=4)
    args = [uri, "--hw", "gb200-nvl72", "--ep", "4", "--json"]
    here = replay(uri, Deployment(hw="gb200-nvl72", ep=4)).summary.to_dict()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracekit.cli.main",
            "replay",
            *args,
            "--backend",
            "ray",
            "--address",
            ray_cluster,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(here))


def test_cli_sweep_on_ray_writes_results_to_s3(tmp_path: Path, s3_server: S3Server, ray_cluster: str) -> None:
    from click.testing import CliRunner

    from tracekit.cli.main import cli

    uri = _trace(s3_server, steps=3, seed=5)
    out = f"s3://{s3_server.bucket()}/sweeps/run1"
    args = ["sweep", uri, "--hw", "h200-sxm", "--ep", "2,4", "--batch-per-gpu", "2,4", "--no-plot"]
    res = CliRunner().invoke(cli, [*args, "--backend", "ray", "--out", out])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "local")])
    assert res.exit_code == 0, res.output
    query = "SELECT ep, batch_per_gpu, fits, tokens_per_s_per_gpu FROM sweep_points ORDER BY ALL"
    there = CliRunner().invoke(cli, ["sql", query, out, "--format", "csv"])
    here = CliRunner().invoke(cli, ["sql", query, str(tmp_path / "local"), "--format", "csv"])
    assert there.exit_code == 0 and here.exit_code == 0, there.output + here.output
    rows = there.output.splitlines()
    assert [r.split(",")[:3] for r in rows[1:]] == [
        ["2", "2", "True"],
        ["2", "4", "True"],
        ["4", "2", "True"],
        ["4", "4", "True"],
    ]
    assert rows == here.output.splitlines()  # the same results as the local backend's, read back from S3


def test_backend_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnknownNameError, match="valid names: local, ray"):
        get_backend("spark")
    with pytest.raises(UsageError, match="--backend ray"):
        get_backend("local", address="127.0.0.1:6379")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'tracekit\[ray\]'"):
        get_backend("ray")


def test_cli_stats_and_place_evaluate_on_ray_print_what_local_prints(
    tmp_path: Path, ray_cluster: str
) -> None:
    from click.testing import CliRunner

    from tracekit.cli.main import cli

    uri = _trace(None, steps=4, seed=6, at=str(tmp_path / "ep4"))
    for args in (
        ["stats", uri, "--ep", "4", "--format", "json"],
        ["place", uri, "--ep", "4", "--redundant", "4", "--policy", "greedy", "--evaluate", "--hw", "h200-sxm",
         "--json"],
    ):  # fmt: skip
        here = CliRunner().invoke(cli, args)
        there = CliRunner().invoke(cli, [*args, "--backend", "ray"])
        assert here.exit_code == 0 and there.exit_code == 0, here.output + there.output
        assert json.loads(there.stdout) == json.loads(here.stdout) and here.stdout.strip(), args
