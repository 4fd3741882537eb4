"""The comm collector in real multi-process gloo runs: every op type, its bytes, its timing."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.distributed as dist

from tests.factories import tiny_manifest
from tracekit.collect import comm
from tracekit.collect.ep_launch import RankFailureError, open_shard, run
from tracekit.errors import UsageError
from tracekit.trace import TraceWriter, open_trace, validate

WORLD = 4
ROW = 3  # elements per row of the all_to_all_single payload
F32 = 4


def _a2a_rows(src: int, dst: int) -> int:
    """Rows rank ``src`` sends to rank ``dst`` in the uneven all-to-all (zero on one pair)."""
    return 0 if (src, dst) == (1, 2) else src + 2 * dst + 1


def _every_op(rank: int, world: int, out: str) -> None:
    """Issue each recorded op once (a few twice), labelled, with sizes the test derives itself."""
    # one run: every rank's shard carries the same trace id (validate refuses mixed runs)
    manifest = tiny_manifest(world_size=world).replace(trace_id="every-op")
    originals = {name: getattr(dist, name) for name in comm.OPS if hasattr(dist, name)}
    with open_shard(out, manifest, rank=rank) as writer:
        col = comm.CommCollector(writer)
        with col:
            assert all(getattr(dist, n) is not f for n, f in originals.items())
            with pytest.raises(UsageError, match="already enabled"):
                comm.CommCollector(writer).enable()
            with comm.context(step=0, layer=1, purpose="dispatch"):
                ins = [_a2a_rows(rank, j) for j in range(world)]
                outs = [_a2a_rows(j, rank) for j in range(world)]
                x = torch.full((sum(ins), ROW), float(rank))
                y = torch.empty(sum(outs), ROW)
                dist.all_to_all_single(y, x, outs, ins)
                # the receiver sees exactly what each peer sent
                for j, chunk in enumerate(torch.split(y, outs)):
                    assert bool((chunk == j).all())
            with comm.context(step=0):
                dist.all_to_all_single(
                    torch.empty(world * 2, dtype=torch.int64), torch.zeros(world * 2, dtype=torch.int64)
                )
                with comm.context(layer=2, purpose="combine"):
                    # gloo needs equal shapes; uneven splits are covered by all_to_all_single
                    dist.all_to_all(
                        [torch.empty(3, 2) for _ in range(world)], [torch.zeros(3, 2) for _ in range(world)]
                    )
                t = torch.ones(10, dtype=torch.float64)
                dist.all_reduce(t)
                assert float(t[0]) == world
                dist.all_gather(
                    [torch.empty(5, dtype=torch.int32) for _ in range(world)],
                    torch.zeros(5, dtype=torch.int32),
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    dist.all_gather_into_tensor(torch.empty(world * 6), torch.zeros(6))
                    dist.reduce_scatter_tensor(
                        torch.empty(7, dtype=torch.float16), torch.zeros(world * 7, dtype=torch.float16)
                    )
                dist.reduce_scatter(torch.empty(3), [torch.zeros(3) for _ in range(world)])
                dist.broadcast(torch.zeros(22, dtype=torch.uint8), src=2)
                if rank == 0:
                    dist.send(torch.zeros(13), dst=3)
                elif rank == 3:
                    dist.recv(torch.empty(13), src=0)
                if rank == 1:
                    dist.isend(torch.zeros(17, dtype=torch.int64), dst=2).wait()
                elif rank == 2:
                    dist.irecv(torch.empty(17, dtype=torch.int64), src=1).wait()
                dist.barrier()
                # async: rank 3 joins late, rank 0 waits late; the end is the completion time
                if rank == 3:
                    time.sleep(0.4)
                work = dist.all_reduce(torch.ones(4), async_op=True)
                if rank == 0:
                    time.sleep(1.5)
                work.wait()
        assert not col.enabled
        assert all(getattr(dist, n) is f for n, f in originals.items())
        dist.barrier()  # disabled: not recorded
        assert col.rows_written == 12


def _sizes() -> pl.DataFrame:
    """Expected rows per (rank, op): bytes per peer derived here, independently of the collector."""
    rows = []
    for r in range(WORLD):

        def add(
            op: str,
            send: list[int] | None,
            recv: list[int] | None,
            sent: int,
            got: int,
            peer: int | None = None,
            r: int = r,
        ) -> None:
            rows.append(
                {"rank": r, "op": op, "send": send, "recv": recv, "sent": sent, "got": got, "peer": peer}
            )

        def vec(at: int, n: int) -> list[int]:
            return [n if j == at else 0 for j in range(WORLD)]

        send = [_a2a_rows(r, j) * ROW * F32 for j in range(WORLD)]
        recv = [_a2a_rows(j, r) * ROW * F32 for j in range(WORLD)]
        add("all_to_all_single", send, recv, sum(send) - send[r], sum(recv) - recv[r])
        add("all_to_all_single", [16] * WORLD, [16] * WORLD, 16 * (WORLD - 1), 16 * (WORLD - 1))
        add("all_to_all", [24] * WORLD, [24] * WORLD, 72, 72)
        # 10 float64 in 4 chunks (3, 3, 2, 2): reduce-scatter then all-gather
        chunk = [24, 24, 16, 16]
        send = [c + chunk[r] for c in chunk]
        add("all_reduce", send, send, sum(send) - send[r], sum(send) - send[r])
        add("all_gather", [20] * WORLD, [20] * WORLD, 60, 60)
        add("all_gather_into_tensor", [24] * WORLD, [24] * WORLD, 72, 72)
        add("reduce_scatter_tensor", [14] * WORLD, [14] * WORLD, 42, 42)
        add("reduce_scatter", [12] * WORLD, [12] * WORLD, 36, 36)
        if r == 2:
            add("broadcast", [22] * WORLD, vec(2, 22), 66, 0, peer=2)
        else:
            add("broadcast", [0] * WORLD, vec(2, 22), 0, 22, peer=2)
        if r == 0:
            add("send", vec(3, 52), [0] * WORLD, 52, 0, peer=3)
        if r == 3:
            add("recv", [0] * WORLD, vec(0, 52), 0, 52, peer=0)
        if r == 1:
            add("isend", vec(2, 136), [0] * WORLD, 136, 0, peer=2)
        if r == 2:
            add("irecv", [0] * WORLD, vec(1, 136), 0, 136, peer=1)
        add("barrier", [0] * WORLD, [0] * WORLD, 0, 0)
        add("all_reduce", [8] * WORLD, [8] * WORLD, 24, 24)  # 16 bytes in chunks of 4, both ways
    return pl.DataFrame(rows).with_columns(pl.int_range(pl.len()).over("rank").alias("seq"))


@pytest.fixture(scope="module")
def every_op_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("comm") / "trace"
    run(_every_op, WORLD, (str(out),), threads_per_rank=1)
    return out


def test_every_op_recorded_with_its_bytes(every_op_trace: Path) -> None:
    got = open_trace(every_op_trace).scan("comm").sort("rank", "seq").collect()
    want = _sizes()
    assert got.height == want.height
    assert got["rank"].to_list() == want["rank"].to_list()
    assert got["seq"].to_list() == want["seq"].to_list()
    assert got["op"].to_list() == want["op"].to_list()
    assert got["send_bytes_per_peer"].to_list() == want["send"].to_list()
    assert got["recv_bytes_per_peer"].to_list() == want["recv"].to_list()
    assert got["bytes_sent"].to_list() == want["sent"].to_list()
    assert got["bytes_recv"].to_list() == want["got"].to_list()
    assert got["peer"].to_list() == want["peer"].to_list()
    assert got["group_ranks"].to_list() == [list(range(WORLD))] * got.height
    assert set(got["backend"].to_list()) == {"gloo"}
    assert validate(every_op_trace).ok


def test_conservation_across_ranks(every_op_trace: Path) -> None:
    """What rank i says it sent to j is what j says it received from i, for every collective."""
    got = open_trace(every_op_trace).scan("comm").collect()
    for (seq,), call in got.group_by(["seq"]):
        call = call.sort("rank")
        assert call.height == WORLD  # point-to-point calls pair up at the same index
        send = np.array(call["send_bytes_per_peer"].to_list())
        recv = np.array(call["recv_bytes_per_peer"].to_list())
        np.testing.assert_array_equal(send, recv.T, err_msg=f"call {seq}: {call['op'].to_list()}")


def test_context_labels(every_op_trace: Path) -> None:
    got = open_trace(every_op_trace).scan("comm").filter(pl.col("rank") == 0).sort("seq").collect()
    assert got["step"].to_list() == [0] * got.height
    assert got["layer"].to_list()[:3] == [1, None, 2]
    assert got["purpose"].to_list()[:3] == ["dispatch", None, "combine"]
    assert set(got["layer"].to_list()[3:]) == {None}
    assert got["dtype"].to_list()[:6] == ["float32", "int64", "float32", "float64", "int32", "float32"]


def test_async_end_is_completion_not_issue_or_wait(every_op_trace: Path) -> None:
    got = open_trace(every_op_trace).scan("comm").collect()
    assert (got["end_ns"] >= got["start_ns"]).all()
    assert set(got["timing_source"].to_list()) == {"host_timer"}
    last = got.filter(pl.col("seq") == pl.col("seq").max()).sort("rank")
    assert last["is_async"].to_list() == [True] * WORLD
    assert (
        got.filter(pl.col("seq") < pl.col("seq").max(), ~pl.col("op").is_in(["isend", "irecv"]))[
            "is_async"
        ].sum()
        == 0
    )
    r0 = last.row(0, named=True)
    duration_s = (r0["end_ns"] - r0["start_ns"]) / 1e9
    # rank 3 joined 0.4 s late: the reduction cannot finish earlier; rank 0 waited only after 1.5 s
    assert 0.3 < duration_s < 1.3


def test_context_is_cheap_and_nests_without_collector() -> None:
    assert comm.current_context() == comm.CommContext()
    with comm.context(step=4, purpose="dispatch") as outer:
        assert outer == comm.CommContext(step=4, purpose="dispatch")
        with comm.context(layer=9, purpose=None) as inner:
            assert inner == comm.CommContext(step=4, layer=9, purpose=None)
        assert comm.current_context() == outer
    assert comm.current_context() == comm.CommContext()


def test_enable_needs_an_initialised_process_group(tmp_path: Path) -> None:
    with (
        TraceWriter(tmp_path / "t", tiny_manifest()) as w,
        pytest.raises(UsageError, match="init_process_group"),
    ):
        comm.CommCollector(w).enable()


def _fails(rank: int, world: int) -> None:
    raise UsageError("bad input on this rank")


def test_launcher_names_the_failing_rank() -> None:
    with pytest.raises(RankFailureError, match=r"rank 0 failed: UsageError: bad input on this rank") as info:
        run(_fails, 1, threads_per_rank=1)
    assert info.value.ranks == [0]
