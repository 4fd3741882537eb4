"""A real published profile: the GPU side of DeepSeek's DeepSeek-V3 training profile
(``sample_profiles/deepseek-profile-data``, cut by ``scripts/cut_profile_data.py``) is imported
(forward chunks only), calibrated from (``calibrate --from-profile``) and replayed with the
fitted preset against it (``replay --profile``, ``report predicted-vs-measured``). The kernel
time the importer and the report attribute is checked against a direct sum over the JSON, with a
classification written here by hand for this profile's kernels."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli
from tracekit.hardware import get_hardware

DATA = Path(__file__).resolve().parents[2] / "sample_profiles" / "deepseek-profile-data"
PROFILE = DATA / "train-gpu-rank0.json.gz"
#: This profile's kernels by report group, by name (independent of the importer's rules).
HAND = [
    ("dispatch", r"dpsk::ep::|get_fused_mapping|clean_and_count_expert|unique_group_indices|aux_fi_impl|expand_to_fused"),
    ("combine", r"reduce_fused_impl"),
    ("attention", r"flash::"),
    ("expert_gemm", r"m_grouped_fp8"),
    ("gemm", r"fp8_d?ptp128c|xmma_gemm"),
]  # fmt: skip
DEPLOYMENT = ["--hw", "h800-sxm", "--ep", "64", "--prefill-tokens-per-gpu", "4096", "--precision", "fp8"]
FITTED = ("attention", "gemm", "expert_gemm", "elementwise", "dispatch")


def _group(name: str, cat: str) -> str:
    if cat != "kernel":
        return "memcpy"
    if re.search(r"dpsk::ep::\w+::combine<", name):
        return "combine"
    return next((g for g, rx in HAND if re.search(rx, name)), "elementwise")


@pytest.fixture(scope="module")
def direct() -> dict[str, object]:
    """The forward chunks' GPU work straight from the JSON: kernels launched inside an ``...(F)``
    annotation, their total time per group, and the span from the first start to the last end."""
    doc = json.loads(gzip.decompress(PROFILE.read_bytes()))
    ev = doc["traceEvents"]
    fwd = [
        (e["ts"], e["ts"] + e["dur"])
        for e in ev
        if e.get("cat") == "user_annotation" and e["name"].endswith("(F)")
    ]
    launch = {
        e["args"]["correlation"]: e["ts"] for e in ev if e.get("cat") in ("cuda_runtime", "cuda_driver")
    }
    totals: dict[str, float] = {}
    count = 0
    first, last = float("inf"), 0.0
    for e in ev:
        if e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        t = launch.get(e["args"].get("correlation"))
        if t is None or not any(a <= t <= b for a, b in fwd):
            continue
        g = _group(e["name"], e["cat"])
        totals[g] = totals.get(g, 0.0) + e["dur"] * 1e-6
        count += 1
        first, last = min(first, e["ts"]), max(last, e["ts"] + e["dur"])
    assert doc["distributedInfo"]["world_size"] == 64 and doc["deviceProperties"][0]["name"] == "NVIDIA H800"
    return {"totals": totals, "count": count, "span_s": (last - first) * 1e-6, "chunks": len(fwd)}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("profile-data")
    out: dict[str, object] = {"root": root}
    for name, args in (
        ("import", ["import", "kineto", str(PROFILE), "--rank-from", "order", "--keep-pattern", r"\(F\)$",
                    "--rules", str(DATA / "rules.toml"), "--out", str(root / "prof")]),
        ("synth", ["synth", "--model", str(DATA / "config.json"), "--phase", "prefill", "--tokens-per-step",
                   "4096", "--steps", "1", "--routing", "balanced", "--out", str(root / "trace")]),
        ("calibrate", ["calibrate", "--from-profile", str(root / "prof"), "--trace", str(root / "trace"),
                       *DEPLOYMENT, "--phase", "prefill", "--no-fit-gaps", "--write", "--out",
                       str(root / "presets"), "--report", str(root / "fit")]),
        ("replay", ["replay", str(root / "trace"), "--hw", str(root / "presets" / "h800-sxm-profile.toml"),
                    *DEPLOYMENT[2:], "--phase", "prefill", "--profile", str(root / "prof"),
                    "--out", str(root / "rep")]),
        ("report", ["report", "predicted-vs-measured", str(root / "rep"), "--format", "json"]),
    ):  # fmt: skip
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, f"{name}: {res.output}"
        out[name] = res.output
    return out


def test_the_import_holds_the_forward_kernels_of_the_json(
    run: dict[str, object], direct: dict[str, object]
) -> None:
    root = run["root"]
    assert isinstance(root, Path)
    k = pl.read_parquet(root / "prof" / "kernels" / "*.parquet")
    assert direct["chunks"] == 16 and k.height == direct["count"] == 375
    assert "unclassified kernels: none" in str(run["import"])
    groups = {  # the importer's categories into the report's groups
        "moe_dispatch": "dispatch", "moe_layout": "dispatch", "moe_combine": "combine", "attention": "attention",
        "expert_gemm": "expert_gemm", "dense_gemm": "gemm", "elementwise": "elementwise",
        "quantization": "elementwise", "utility": "elementwise", "memcpy": "memcpy",
    }  # fmt: skip
    got = (
        k.with_columns(pl.col("category").replace_strict(groups).alias("g"))
        .group_by("g")
        .agg((pl.col("duration_ns").sum() * 1e-9).alias("s"))
    )
    got_d = dict(zip(got["g"].to_list(), got["s"].to_list(), strict=True))
    want = direct["totals"]
    assert isinstance(want, dict)
    assert set(got_d) == set(want)
    for g, s in want.items():
        assert got_d[g] == pytest.approx(s, rel=1e-9, abs=1e-9), g
    # four MoE layers inferred from the repeating kernel sequence
    assert sorted(k["layer"].drop_nulls().unique().to_list()) == [0, 1, 2, 3]


def test_the_report_attributes_every_kernel(run: dict[str, object], direct: dict[str, object]) -> None:
    root = run["root"]
    assert isinstance(root, Path)
    t = pl.read_parquet(root / "rep" / "replay_profile.parquet")
    per = dict(zip(*t.group_by("component").agg(pl.col("measured_s").sum()).to_dict(as_series=False).values(), strict=True))  # fmt: skip
    want = direct["totals"]
    assert isinstance(want, dict)
    # groups per layer, plus the kernels outside the inferred layers ("edges") and the memcpy rows
    # nothing predicts ("unmatched"), add up to the JSON's total
    in_groups = sum(per.get(g, 0.0) for g in ("attention", "gemm", "expert_gemm", "elementwise", "dispatch", "combine"))  # fmt: skip
    assert in_groups + per["edges"] + per["unmatched"] == pytest.approx(sum(want.values()), rel=1e-9)
    assert per["unmatched"] == pytest.approx(want["memcpy"], rel=1e-9)
    for g in ("attention", "gemm", "expert_gemm"):  # every such kernel lies inside a layer
        assert per[g] == pytest.approx(want[g], rel=1e-9), g
    step = t.filter(pl.col("component") == "step")
    assert step.height == 1 and step["measured_s"][0] == pytest.approx(direct["span_s"], rel=1e-9)
    # the canned report (one profiled step on one rank): the table's sums, the error recomputed
    rows = json.loads(str(run["report"]))
    by = {r["component"]: r for r in rows}
    sums = t.group_by("component").agg(pl.col("measured_s").sum(), pl.col("predicted_s").sum())
    for comp, m, p in sums.iter_rows():
        r = by[comp]
        assert r["measured_s"] == pytest.approx(m, rel=1e-9), comp
        if comp != "unmatched":
            assert r["predicted_s"] == pytest.approx(p, rel=1e-9), comp
            assert r["error"] == pytest.approx(p / m - 1, rel=1e-6), comp


def test_the_fitted_preset_reproduces_the_fitted_groups(run: dict[str, object]) -> None:
    root = run["root"]
    assert isinstance(root, Path)
    preset = get_hardware(root / "presets" / "h800-sxm-profile.toml")
    assert preset.kernels[("mla_prefill", "bf16")].compute_eff < get_hardware("h800-sxm").kernels[("mla_prefill", "bf16")].compute_eff  # fmt: skip
    t = pl.read_parquet(root / "rep" / "replay_profile.parquet")
    per = t.group_by("component").agg(pl.col("measured_s").sum(), pl.col("predicted_s").sum())
    for comp, m, p in per.iter_rows():
        if comp in FITTED:
            assert p == pytest.approx(m, rel=0.05), comp


def test_a_bad_keep_pattern_is_named(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        cli, ["import", "kineto", str(PROFILE), "--keep-pattern", "(F", "--out", str(tmp_path / "p")]
    )
    assert res.exit_code != 0 and "--keep-pattern '(F' is not a valid regular expression" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "p").exists()
