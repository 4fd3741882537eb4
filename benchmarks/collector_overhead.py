"""Overhead of the routing collector on a real generate(), side by side with torch.profiler.

Runs the same greedy generate() three ways, interleaved, several rounds: plain; under
``tracekit.record`` (routing of every MoE layer and token written to a trace); under
``torch.profiler.profile(record_shapes=True)`` (the usual way to see inside a run). Prints the
median wall time of each and the ratios.

    python benchmarks/collector_overhead.py            # a CPU-sized default (a few minutes)
    python benchmarks/collector_overhead.py --full     # hidden 1024, 16 layers, 64 experts, top-8,
                                                       # batch 32, 64 new tokens
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

import tracekit

SIZES = {
    "default": {
        "hidden": 512,
        "layers": 8,
        "experts": 64,
        "top_k": 8,
        "expert_ffn": 128,
        "batch": 16,
        "new": 32,
    },
    "full": {
        "hidden": 1024,
        "layers": 16,
        "experts": 64,
        "top_k": 8,
        "expert_ffn": 256,
        "batch": 32,
        "new": 64,
    },
}


def build(size: dict[str, int], seed: int) -> torch.nn.Module:
    cfg = Qwen3MoeConfig(
        vocab_size=4096,
        hidden_size=size["hidden"],
        intermediate_size=2 * size["hidden"],
        moe_intermediate_size=size["expert_ffn"],
        num_hidden_layers=size["layers"],
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=size["hidden"] // 8,
        num_experts=size["experts"],
        num_experts_per_tok=size["top_k"],
        norm_topk_prob=True,
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(cfg)
    model.eval()
    return model


def _encode_time(trace: tracekit.Trace, folder: Path) -> float:
    """Time to encode the recorded tables once more, as the background writer did (zstd Parquet)."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        t: trace.read(t) for t in ("steps", "tokens", "routing", "expert_load", "requests") if trace.has(t)
    }
    t0 = time.perf_counter()
    for name, table in tables.items():
        pq.write_table(table, folder / f"{name}.parquet", compression="zstd")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the issue's size (slow on a small CPU)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; min and median are reported")
    ap.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per request")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = SIZES["full" if args.full else "default"]
    model = build(size, seed=0).to(args.device)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 4096, (size["batch"], args.prompt_len), generator=gen).to(args.device)
    mask = torch.ones_like(ids)
    kw = dict(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=size["new"],
        min_new_tokens=size["new"],
        do_sample=False,
        pad_token_id=0,
    )

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-"))

    def plain() -> None:
        model.generate(**kw)

    host_s: list[float] = []

    def collected(i: int) -> None:
        with tracekit.record(model, tmp / f"trace{i}", overwrite=True) as rec:
            model.generate(**kw)
        host_s.append(rec.collector.host_time_ns / 1e9)

    def profiled() -> None:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        with profile(activities=acts, record_shapes=True):
            model.generate(**kw)

    modes = ("generate", "generate + tracekit.record", "generate + torch.profiler")
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    with torch.inference_mode():
        plain()  # warm-up
        for r in range(args.rounds):
            for name, fn in zip(modes, (plain, lambda r=r: collected(r), profiled), strict=True):
                sync()
                t, c = time.perf_counter(), time.process_time()
                fn()
                sync()
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                print(
                    f"  round {r + 1}: {name:<28} wall {wall[name][-1]:7.2f} s  cpu {cpu[name][-1]:7.2f} s",
                    flush=True,
                )
    trace = tracekit.open_trace(tmp / "trace0")
    rows = trace.scan("routing").select("step").collect().height
    encode_s = _encode_time(trace, tmp / "reencode")
    print()
    print(
        f"model: Qwen3-MoE hidden {size['hidden']}, {size['layers']} layers, {size['experts']} experts, "
        f"top-{size['top_k']}; batch {size['batch']}, prompt {args.prompt_len}, {size['new']} new tokens; "
        f"device {args.device}, {torch.get_num_threads()} threads; {args.rounds} interleaved rounds; "
        f"{rows} routing rows per recorded run"
    )
    print(f"{'':<30} {'min wall s':>10} {'median wall s':>14} {'min cpu s':>10}")
    for m in modes:
        print(f"{m:<30} {min(wall[m]):10.2f} {statistics.median(wall[m]):14.2f} {min(cpu[m]):10.2f}")
    for label, table in (("wall (min)", wall), ("process cpu (min)", cpu)):
        base = min(table["generate"])
        coll = min(table["generate + tracekit.record"]) - base
        prof = min(table["generate + torch.profiler"]) - base
        line = f"{label:<18} collector {100 * coll / base:+6.1f}%   profiler {100 * prof / base:+6.1f}%"
        if prof > 0:
            line += f"   collector/profiler {coll / prof:5.2f}"
        print(line)
    base = min(wall["generate"])
    print(
        f"instrumented collector cost: {min(host_s):.3f} s on the model's thread (hooks, begin/end_step: "
        f"{100 * min(host_s) / base:.2f}% of generate) + {encode_s:.3f} s Parquet encoding on the writer "
        f"thread ({100 * encode_s / base:.2f}%): {100 * (min(host_s) + encode_s) / base:.2f}% in all"
    )
    print(
        "min over rounds is the robust estimate on a shared machine (other work only ever adds time); "
        "process cpu counts every thread of this process, the background trace writer included"
    )


if __name__ == "__main__":
    main()
