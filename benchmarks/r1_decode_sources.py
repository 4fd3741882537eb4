"""DeepSeek-R1 decode on h200-sxm and gb200-nvl72: the step time component by component as each
timing source prices it (the table in docs/calibration.md, recomputed by
``tests/replay/test_r1_decode_sources.py``).

    python benchmarks/r1_decode_sources.py            # the markdown tables (about a minute)

Sources: **analytic** (the preset's fitted kernel curves), **measured** (``--timing measured``:
AIConfigurator's database for the system priced where it covers the shape) and **profile-fitted**
(``calibrate --from-profile``: the preset's curves, launch gaps and communication multipliers fitted
to a profile of the run). No profile of these deployments is public, so the profiled run here is
the measured replay of a calibration deployment written out as Kineto JSON
(:func:`tracekit.replay.profile_synth.write_profile`: the kernels take the database's times): the
fit learns the database's kernels through the curves, and is then held out on the other batch
sizes (the leave-one-deployment-out rows). Needs the aiconfigurator extra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from tracekit.hardware import get_hardware
from tracekit.models import get_model
from tracekit.replay import Deployment, Precision, replay
from tracekit.replay.profile import load_profile
from tracekit.replay.profile_fit import fit_profile
from tracekit.replay.profile_synth import write_profile
from tracekit.synth import SynthConfig, parse_spec, synthesize


@dataclass(frozen=True)
class Case:
    hw: str
    ep: int
    #: The calibration deployment's decode sequences per GPU (the profiled run).
    batch: int
    #: Batch sizes held out: predicted by the fit, compared with the measured source.
    held_out: tuple[int, ...]


CASES = (Case("h200-sxm", 8, 64, (16, 128)), Case("gb200-nvl72", 32, 64, (16, 128)))
KV_LEN = 2048
#: Components: name, replay_ranks columns (per layer and rank; summed over layers, mean over ranks
#: and steps). ``small kernels`` holds the norms, quantisation, router and launch gaps.
COMPONENTS = (
    ("attention core", ("attention_s",)),
    ("attention projections + dense", ("attn_proj_s", "dense_s")),
    ("routed experts", ("expert_gemm_s",)),
    ("small kernels + launch gaps", ("fixed_s",)),
    ("dispatch", ("dispatch_s",)),
    ("combine", ("combine_s",)),
)
SOURCES = ("analytic", "measured", "profile-fitted")


def _dep(case: Case, batch: int, **kw: object) -> Deployment:
    return Deployment(
        hw=case.hw,
        model="deepseek-r1",
        ep=case.ep,
        batch_per_gpu=batch,
        kv_len=KV_LEN,
        precision=Precision.parse("fp8"),
        **kw,  # type: ignore[arg-type]
    )


def components_ms(result: object) -> dict[str, float]:
    """Per component, ms per decode step on a GPU (summed over layers, mean over ranks and steps),
    and the step time (mean over steps)."""
    ranks = result.ranks  # type: ignore[attr-defined]
    steps = result.steps  # type: ignore[attr-defined]
    n = ranks.select(pl.struct("step", "rank").n_unique()).item()
    out = {}
    for name, cols in COMPONENTS:
        out[name] = 1e3 * float(ranks.select(pl.sum_horizontal(*cols).sum()).item()) / n
    out["step"] = 1e3 * float(steps["step_time_s"].mean())  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class CaseResult:
    case: Case
    #: batch -> source -> component -> ms
    ms: dict[int, dict[str, dict[str, float]]]
    fitted: dict[str, float]


def run_case(case: Case, root: Path) -> CaseResult:
    batches = sorted({case.batch, *case.held_out})
    tokens = case.ep * max(batches)
    trace = root / f"{case.hw}-trace"
    synthesize(
        SynthConfig(
            arch=get_model("deepseek-r1"),
            spec=parse_spec("uniform"),
            phase="decode",
            tokens_per_step=tokens,
            steps=2,
            prompt_len=KV_LEN,
            gate_weights=False,
        ),
        trace,
        overwrite=True,
    )
    hw = get_hardware(case.hw)
    measured = _dep(case, case.batch, timing="measured")
    run = replay(trace, measured)
    free = replay(trace, replace(measured, hw_overrides={"launch_gap_s": 0.0, "launch_gap_eager_s": 0.0}))
    files = write_profile(
        run, free, root / f"{case.hw}-profile", gap_s={"decode": hw.launch_gap_s}, ranks=[0]
    )
    fit = fit_profile(trace, _dep(case, case.batch), load_profile(files))
    ms: dict[int, dict[str, dict[str, float]]] = {}
    for b in batches:
        ms[b] = {
            "analytic": components_ms(replay(trace, _dep(case, b))),
            "measured": components_ms(replay(trace, _dep(case, b, timing="measured"))),
            "profile-fitted": components_ms(replay(trace, _dep(case, b, hw_overrides=fit.overrides))),
        }
    return CaseResult(case, ms, dict(fit.overrides))


def run_all() -> list[CaseResult]:
    with tempfile.TemporaryDirectory(prefix="tracekit-r1-sources-") as tmp:
        return [run_case(c, Path(tmp)) for c in CASES]


def _f(x: float) -> str:
    return f"{x:.3f}"


def _err(x: float, ref: float) -> str:
    return f"{100 * (x / ref - 1):+.1f}%" if ref else "-"


def component_table(results: list[CaseResult]) -> str:
    """Per system, at the calibration batch: each component in each source, errors vs measured."""
    head = ["hardware", "EP x batch", "component", "analytic ms", "measured ms", "profile-fitted ms",
            "analytic vs measured", "fitted vs measured"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 5) + "|"]
    for r in results:
        m = r.ms[r.case.batch]
        for comp in [c for c, _ in COMPONENTS] + ["step"]:
            a, me, p = (m[s][comp] for s in SOURCES)
            lines.append(
                f"| {r.case.hw} | {r.case.ep} x {r.case.batch} | {comp} | {_f(a)} | {_f(me)} | {_f(p)} | "
                f"{_err(a, me)} | {_err(p, me)} |"
            )
    return "\n".join(lines)


def holdout_table(results: list[CaseResult]) -> str:
    """Step times at the held-out batch sizes: the fit from the calibration batch predicts them."""
    head = ["hardware", "EP x batch", "held out", "analytic ms", "measured ms", "profile-fitted ms",
            "analytic vs measured", "fitted vs measured"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 5) + "|"]
    for r in results:
        for b in sorted(r.ms):
            a, me, p = (r.ms[b][s]["step"] for s in SOURCES)
            held = "no (the profiled run)" if b == r.case.batch else "yes"
            lines.append(
                f"| {r.case.hw} | {r.case.ep} x {b} | {held} | {_f(a)} | {_f(me)} | {_f(p)} | "
                f"{_err(a, me)} | {_err(p, me)} |"
            )
    return "\n".join(lines)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    results = run_all()
    print(component_table(results))
    print()
    print(holdout_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
