"""Cost of the comm collector per recorded torch.distributed call, side by side with no collector.

Starts ``--world`` gloo ranks on this machine; each times ``--calls`` labelled
``all_to_all_single`` calls (a small uneven payload, as in an expert-parallel decode step) with the
collector disabled and enabled, interleaved over several rounds, and rank 0 prints the medians, the
difference per call and the ratio. With the collector disabled nothing is wrapped, so "off" is the
plain cost of the call.

    python benchmarks/comm_overhead.py                 # 2 ranks, 2000 calls per round
    python benchmarks/comm_overhead.py --world 4 --calls 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.distributed as dist

from tracekit.collect import comm
from tracekit.collect.ep_launch import open_shard, run
from tracekit.schema import AttentionSpec, Manifest, ModelArch, ParallelLayout


def _manifest(world: int) -> Manifest:
    arch = ModelArch(
        name="comm-benchmark",
        architecture="none",
        num_layers=1,
        moe_layers=(0,),
        hidden_size=64,
        moe_intermediate_size=64,
        num_experts=world,
        top_k=1,
        attention=AttentionSpec(kind="mha", num_heads=1, num_kv_heads=1, head_dim=64),
        vocab_size=1,
        dtype="float32",
    )
    return Manifest(model=arch, source="recorded", parallel=ParallelLayout(world_size=world, ep_size=world))


def _timed(calls: int, rank: int, world: int) -> float:
    splits = [1 + (rank + j) % 3 for j in range(world)]
    x = torch.zeros(sum(splits), 64)
    recv = [1 + (j + rank) % 3 for j in range(world)]
    y = torch.empty(sum(recv), 64)
    dist.barrier()
    t = time.perf_counter()
    for i in range(calls):
        with comm.context(step=i, layer=0, purpose="dispatch"):
            dist.all_to_all_single(y, x, recv, splits)
    dist.barrier()
    return (time.perf_counter() - t) / calls


def _rank(rank: int, world: int, calls: int, rounds: int, out: str) -> None:
    off: list[float] = []
    on: list[float] = []
    for r in range(rounds):
        off.append(_timed(calls, rank, world))
        with open_shard(f"{out}/round{r}", _manifest(world), rank=rank) as writer, comm.CommCollector(writer):
            on.append(_timed(calls, rank, world))
    if rank == 0:
        a, b = statistics.median(off) * 1e6, statistics.median(on) * 1e6
        print(f"world {world}, {calls} all_to_all_single calls x {rounds} rounds (median per call)")
        print(f"  collector off : {a:8.1f} us")
        print(f"  collector on  : {b:8.1f} us")
        print(f"  cost per call : {b - a:8.1f} us  (on/off = {b / a:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        run(_rank, args.world, (args.calls, args.rounds, out), threads_per_rank=1)


if __name__ == "__main__":
    main()
