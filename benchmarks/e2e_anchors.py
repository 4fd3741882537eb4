"""The replay against published end-to-end deployments: every row of the reference end-to-end table,
rebuilt with synth + place + replay at the published conditions, printed beside the published figure.

    python benchmarks/e2e_anchors.py                 # every anchor and mechanism figure
    python benchmarks/e2e_anchors.py --only decode   # anchors whose id contains 'decode'

Each anchor (benchmarks/e2e_anchors.toml) names the system, EP degree, batch, prompt length,
communication implementation, two-batch overlap and expert placement policy. A DeepSeek-R1 trace is
synthesised with routing as skewed as published DeepSeek-R1 routing (per-rank imbalance 1.564 at
EP 32 without load balancing), placed with the deployment's policy and replayed. The error is
``predicted / published - 1``; rows within 15% pass. The mechanism gains are the same deployment
replayed with and without the mechanism (two-batch overlap; EPLB placement against contiguous
experts without redundant copies), compared with the published gain (within 10 points).
Nothing here is fitted: the presets' parameters come from kernel and communication tables
(``tracekit calibrate``).
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit.models import get_model
from tracekit.replay import Deployment, Precision, replay
from tracekit.replay.whatif import placement_whatif
from tracekit.synth import SynthConfig, parse_spec, synthesize

HERE = Path(__file__).resolve().parent
ANCHORS = HERE / "e2e_anchors.toml"
#: Rows within this relative error pass; mechanism gains within this many points.
TOLERANCE = 0.15
GAIN_POINTS = 0.10
#: GPUs per node of the published per-node figures.
GPUS_PER_NODE = 8
#: What each kind of mechanism gain compares (the anchor against the same deployment without it).
GAIN_NAMES = {"tbo": "two-batch overlap gain", "eplb": "EPLB gain vs none"}
#: Preset overrides for every anchor (``--set field=value``; none by default).
HW_SET: dict[str, str] = {}
#: Prompt tokens synthesised for a prefill anchor (the replay reuses them to fill its step).
PREFILL_TOKENS = 131_072


@dataclass(frozen=True)
class Outcome:
    id: str
    metric: str
    published: float
    predicted: float
    seconds: float
    breakdown: dict[str, float]

    @property
    def error(self) -> float:
        return self.predicted / self.published - 1.0


def load() -> dict[str, Any]:
    return tomllib.loads(ANCHORS.read_text(encoding="utf-8"))


def _trace(a: dict[str, Any], routing: dict[str, Any], work: Path) -> Path:
    decode = a["phase"] == "decode"
    tokens = a["batch_per_gpu"] * a["ep"] if decode else PREFILL_TOKENS
    path = work / f"r1-{a['phase']}-{tokens}-isl{a['isl']}"
    if not (path / "manifest.json").exists():
        synthesize(
            SynthConfig(
                arch=get_model("deepseek-r1"),
                spec=parse_spec(routing["kind"]),
                phase=a["phase"],
                tokens_per_step=tokens,
                steps=3 if decode else 1,
                seed=routing["seed"],
                prompt_len=a["isl"],
                ep=routing["target_ep"],
                target_imbalance=routing["target_imbalance"],
                gate_weights=False,
            ),
            path,
            overwrite=True,
        )
    return path


def deployment(a: dict[str, Any], trace: Path, *, tbo: bool | None = None) -> Deployment:
    placement = None
    if a["placement"] != "contiguous" or a.get("redundant", 0):
        nodes = max(1, a["ep"] // GPUS_PER_NODE)
        whatif = placement_whatif(
            trace,
            num_ranks=a["ep"],
            policies=(a["placement"],),
            num_redundant=a.get("redundant", 0),
            num_nodes=nodes,
            baseline=False,
        )
        placement = (whatif.outcomes[-1].plan.placement.with_(from_step=0),)
    decode = a["phase"] == "decode"
    kv = a["isl"] + a["osl"] // 2 if decode and "osl" in a else None
    return Deployment(
        hw=a["hw"],
        hw_overrides=dict(HW_SET),
        ep=a["ep"],
        precision=Precision.parse("fp8"),
        impl=a["impl"],
        tbo=a["tbo"] if tbo is None else tbo,
        placement=placement,
        batch_per_gpu=a.get("batch_per_gpu"),
        prefill_tokens_per_gpu=a.get("tokens_per_gpu"),
        kv_len=kv,
        steps=None if decode else 1,
        aggregated=(a["isl"], a["osl"]) if a.get("aggregated") else None,
    )


def run_anchor(a: dict[str, Any], routing: dict[str, Any], work: Path, *, tbo: bool | None = None) -> Outcome:
    t0 = time.perf_counter()
    trace = _trace(a, routing, work)
    res = replay(trace, deployment(a, trace, tbo=tbo), phases=[a["phase"]], collect_ranks=False)
    s = res.summary
    per_gpu = s.tokens_per_s_per_gpu
    value = per_gpu * GPUS_PER_NODE if a["metric"].endswith("per node") else per_gpu
    return Outcome(
        id=a["id"] + ("" if tbo is None else f" (TBO {'on' if tbo else 'off'})"),
        metric=a["metric"],
        published=float(a["published"]),
        predicted=value,
        seconds=time.perf_counter() - t0,
        breakdown=dict(s.breakdown),
    )


def fit_derate(data: dict[str, Any], work: Path, gain_id: str) -> None:
    """The ``overlap_derate`` of the gain anchor's communication implementation that reproduces the
    middle of its published two-batch-overlap gain (bisection on the replayed gain)."""
    g = next(x for x in data["gain"] if x["id"] == gain_id)
    a = next(x for x in data["anchor"] if x["id"] == g["anchor"])
    key = f"comm.{a['impl']}.overlap_derate"
    target = (g["low"] + g["high"]) / 2.0
    off = run_anchor(a, data["routing"], work, tbo=False).predicted
    lo, hi = 1.0, 2.0
    for _ in range(12):
        mid = (lo + hi) / 2.0
        HW_SET[key] = str(mid)
        gain = run_anchor(a, data["routing"], work, tbo=True).predicted / off - 1.0
        print(f"{key} = {mid:.4f}: gain {100 * gain:+.1f}% (target {100 * target:+.1f}%)", flush=True)
        lo, hi = (mid, hi) if gain > target else (lo, mid)
    print(f"{key} = {(lo + hi) / 2.0:.3f} reproduces the published {g['id']} ({g['source']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run the anchors whose id contains this text")
    ap.add_argument(
        "--work", type=Path, default=Path("bench_out/e2e"), help="where synthesised traces are kept"
    )
    ap.add_argument("--breakdown", action="store_true", help="print each anchor's step breakdown")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="preset override FIELD=VALUE")
    ap.add_argument("--fit-derate", metavar="GAIN_ID", help="fit the overlap derate to a published gain")
    args = ap.parse_args()
    for item in args.sets:
        key, _, value = item.partition("=")
        HW_SET[key] = value
    data = load()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.fit_derate:
        fit_derate(data, args.work, args.fit_derate)
        return
    anchors = {a["id"]: a for a in data["anchor"] if args.only in a["id"]}
    failed = 0
    print(f"{'anchor':34} {'metric':26} {'published':>10} {'replay':>10} {'error':>8}")
    outcomes = {}
    for a in anchors.values():
        o = run_anchor(a, data["routing"], args.work)
        outcomes[a["id"]] = o
        ok = abs(o.error) <= TOLERANCE
        failed += not ok
        print(
            f"{o.id:34} {o.metric:26} {o.published:10,.0f} {o.predicted:10,.0f} {100 * o.error:+7.1f}%  {'ok' if ok else 'OFF'}"
        )
        if args.breakdown:
            parts = ", ".join(f"{k} {1e3 * v:.2f}" for k, v in o.breakdown.items() if v)
            print(f"    ms per step: {parts}")
    for g in data.get("gain", []):
        if g["anchor"] not in anchors:
            continue
        a = anchors[g["anchor"]]
        on = outcomes[a["id"]].predicted
        kind = g.get("kind", "tbo")
        if kind == "tbo":
            off = run_anchor(a, data["routing"], args.work, tbo=False).predicted
        else:  # eplb: the same deployment with experts placed contiguously, no redundant copies
            off = run_anchor(
                dict(a, placement="contiguous", redundant=0), data["routing"], args.work
            ).predicted
        gain = on / off - 1.0
        dist = 0.0 if g["low"] <= gain <= g["high"] else min(abs(gain - g["low"]), abs(gain - g["high"]))
        ok = dist <= GAIN_POINTS
        failed += not ok
        pub = f"+{100 * g['low']:.1f}%" + (f"..+{100 * g['high']:.1f}%" if g["high"] != g["low"] else "")
        print(
            f"{g['id']:34} {GAIN_NAMES[kind]:26} {pub:>10} {100 * gain:+9.1f}% {'':>8}  {'ok' if ok else 'OFF'}"
        )
    print(f"\n{len(anchors)} anchors, {len([g for g in data.get('gain', []) if g['anchor'] in anchors])} gains: "
          f"{'all within tolerance' if not failed else f'{failed} outside tolerance'}")  # fmt: skip
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
