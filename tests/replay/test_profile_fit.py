"""Calibrating from a GPU profile: a profile built from a known timing model (kernels with real
names, durations from efficiencies other than the preset's, 2% noise per kernel) is imported,
fitted, and the efficiencies, launch gaps and communication multipliers it was built with come back;
a replay on the written preset reproduces the profile's step times."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from tests.factories import r1_h200_ep8
from tests.replay._traces import random_ids, write_ranked_trace
from tracekit.cli.main import cli
from tracekit.errors import UsageError
from tracekit.hardware import get_hardware
from tracekit.replay import replay
from tracekit.replay.profile import load_profile, profile_table
from tracekit.replay.profile_fit import ProfileFit, fit_profile, write_profile_preset
from tracekit.replay.profile_synth import NAMES, write_profile

#: The run's stack: efficiencies, launch gaps and communication unlike the h200-sxm preset's.
TRUE = {
    "kernel.gemm.bf16.memory_eff": 0.60,
    "kernel.gemm.bf16.compute_eff": 0.55,
    "kernel.grouped_gemm.fp8.memory_eff": 0.70,
    "kernel.grouped_gemm.fp8.compute_eff": 0.50,
    "kernel.mla_decode.bf16.compute_eff": 0.40,
    "kernel.mla_prefill.bf16.compute_eff": 0.35,
    "kernel.elementwise.any.memory_eff": 0.50,
}
GAPS = {"launch_gap_s": 2.5e-6, "launch_gap_eager_s": 5e-6}
SCALES = {"scale.moe_dispatch": 1.3, "scale.moe_combine": 0.8}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A trace (8 ranks: one prefill step of 512 tokens each, 3 decode steps of 16), the profile of
    ranks 0 and 1 built from the true timing model, and the fit."""
    root = tmp_path_factory.mktemp("profile-fit")
    ids = random_ids(np.random.default_rng(3), (8, 3, 3, 16), 256, 8)
    write_ranked_trace(
        root / "t", ids, num_experts=256, position=np.arange(16) * 97 + 300, prefill_tokens=512
    )
    over = {**TRUE, **GAPS, **SCALES}
    true = replay(root / "t", r1_h200_ep8(hw_overrides=over))
    free = replay(
        root / "t", r1_h200_ep8(hw_overrides={**over, "launch_gap_s": 0.0, "launch_gap_eager_s": 0.0})
    )
    files = write_profile(
        true,
        free,
        root / "prof",
        gap_s={"prefill": GAPS["launch_gap_eager_s"], "decode": GAPS["launch_gap_s"]},
        step_numbers=[40, 41, 42, 43],
        ranks=[0, 1],
        jitter=0.02,
        seed=1,
    )
    profile = load_profile(files)
    fit = fit_profile(root / "t", r1_h200_ep8(), profile)
    return {"root": root, "files": files, "profile": profile, "fit": fit, "true": true}


def _fitted(fit: ProfileFit) -> dict[str, tuple[float, bool]]:
    out = {}
    for g in fit.groups:
        for p in g.params:
            for (fam, dt), v in zip(p.curves, p.value, strict=True):
                out[f"kernel.{fam}.{dt}.{p.field}"] = (v, p.fitted)
    return out


def test_the_efficiencies_come_back_within_5_percent(run: dict[str, object]) -> None:
    fit = run["fit"]
    assert isinstance(fit, ProfileFit)
    got = _fitted(fit)
    base = get_hardware("h200-sxm")
    for key, want in TRUE.items():
        value, fitted = got[key]
        assert fitted, f"{key} was not fitted"
        assert value == pytest.approx(want, rel=0.05), key
        fam, dt, field = key.split(".")[1:]
        assert abs(getattr(base.kernels[(fam, dt)], field) / want - 1) > 0.15  # the preset is far off
    # fitted parameters the run did not change stay at the preset's value
    for key, (value, fitted) in got.items():
        if fitted and key not in TRUE:
            fam, dt, field = key.split(".")[1:]
            assert value == pytest.approx(getattr(base.kernels[(fam, dt)], field), rel=0.05), key
    for key, want in GAPS.items():
        assert fit.gaps[key] == pytest.approx(want, rel=0.05)
    scales = {f"scale.{g.scale[0]}": g.scale[1] for g in fit.groups if g.scale is not None}
    assert scales == pytest.approx(SCALES, rel=0.05)
    # a decode profile says nothing of how the MLA decode kernel streams memory: held, and said so
    held = {(g.name, p.field): p.note for g in fit.groups for p in g.params if not p.fitted}
    assert "does not exercise" in held[("attention:mla_decode", "memory_eff")]
    assert fit.unmatched == {}


def test_a_replay_on_the_written_preset_reproduces_the_step_times(
    run: dict[str, object], tmp_path: Path
) -> None:
    fit, profile = run["fit"], run["profile"]
    assert isinstance(fit, ProfileFit)
    path = write_profile_preset(fit, tmp_path)
    raw = tomllib.loads(path.read_text())
    assert raw["base"] == "h200-sxm" and raw["calibration"]["profile"]["profile"] == [
        str(f) for f in run["files"]
    ]  # type: ignore[attr-defined]
    assert "rms log residual" in raw["kernel"]["grouped_gemm"]["fp8"]["memory_eff"]["source"]
    root = run["root"]
    assert isinstance(root, Path)
    res = replay(root / "t", r1_h200_ep8(hw=str(path)))
    table = profile_table(res, profile)  # type: ignore[arg-type]
    steps = table.filter(pl.col("component") == "step")
    assert steps.height == 8  # 4 steps x 2 profiled ranks
    assert np.abs(steps["error"].to_numpy()).max() < 0.05
    # the preset it started from is far off (the test would catch a fit that did nothing)
    before = profile_table(replay(root / "t", r1_h200_ep8()), profile)  # type: ignore[arg-type]
    assert np.abs(before.filter(pl.col("component") == "step")["error"].to_numpy()).min() > 0.15
    # the written preset is the fit's replay (its values written to 6 significant digits)
    np.testing.assert_allclose(
        res.steps["step_time_s"].to_numpy(), fit.after.steps["step_time_s"].to_numpy(), rtol=1e-5
    )


def test_replay_profile_table_against_the_kernels(run: dict[str, object]) -> None:
    """The table's measured side equals the kernels' own sums per layer and category."""
    fit, profile = run["fit"], run["profile"]
    assert isinstance(fit, ProfileFit)
    k = profile.kernels  # type: ignore[attr-defined]
    t = fit.table_after
    # decode step 1 of the replay is profiled step 42; layer 5 on rank 1
    sel = k.filter((pl.col("step") == 42) & (pl.col("layer") == 5) & (pl.col("rank") == 1))
    want = sel.group_by("category").agg(pl.col("duration_ns").sum() / 1e9)
    row = t.filter((pl.col("profile_step") == 42) & (pl.col("layer") == 5) & (pl.col("rank") == 1))
    got = dict(zip(row["component"].to_list(), row["measured_s"].to_list(), strict=True))
    cat = dict(zip(want["category"].to_list(), want["duration_ns"].to_list(), strict=True))
    assert got["attention"] == pytest.approx(cat["attention"])
    assert got["gemm"] == pytest.approx(cat["dense_gemm"])
    assert got["elementwise"] == pytest.approx(cat["elementwise"] + cat["quantization"])
    assert got["dispatch"] == pytest.approx(cat["moe_dispatch"])
    # the launch gaps: idle between consecutive compute kernels of the layer on its stream
    comp = sel.filter(pl.col("stream") == 7).sort("start_ns")
    idle = (comp["start_ns"][1:].to_numpy() - (comp["start_ns"] + comp["duration_ns"])[:-1].to_numpy()).sum()
    assert got["launch_gaps"] == pytest.approx(idle / 1e9)
    assert row.filter(pl.col("component") == "step").is_empty()  # step rows have no layer
    step = t.filter((pl.col("profile_step") == 42) & (pl.col("rank") == 1) & (pl.col("component") == "step"))
    span = k.filter((pl.col("step") == 42) & (pl.col("rank") == 1))
    assert step["measured_s"][0] == pytest.approx(
        ((span["start_ns"] + span["duration_ns"]).max() - span["start_ns"].min()) / 1e9
    )
    assert (
        t["error"].drop_nulls() - (t["predicted_s"] / t["measured_s"] - 1).drop_nulls()
    ).abs().max() < 1e-12


def _event(name: str, ts: float, dur: float, cat: str = "kernel", stream: int = 7) -> dict[str, object]:
    return {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": stream, "ts": ts, "dur": dur,
            "args": {"device": 0, "stream": stream, "correlation": int(ts)}}  # fmt: skip


def test_unmatched_kernels_are_reported_not_dropped(run: dict[str, object], tmp_path: Path) -> None:
    root = run["root"]
    assert isinstance(root, Path)
    # rank 0's profile with a kernel of a category no component models inside layer 3 of the
    # first step, and a memcpy outside every step
    doc = json.loads(Path(run["files"][0]).read_text())  # type: ignore[index]
    ev = doc["traceEvents"]
    layer3 = next(e for e in ev if e["name"] == "model.layers.3")
    ev.append(_event("acme_custom_fused_thing_kernel", layer3["ts"] + 0.5, 7.0))
    ev.append(_event("Memcpy DtoH (Device -> Pinned)", 0.5, 3.0, cat="gpu_memcpy"))
    path = tmp_path / "prof_rank0.json"
    path.write_text(json.dumps(doc))
    prof = load_profile([path])
    res = replay(root / "t", r1_h200_ep8())
    table = profile_table(res, prof)
    un = table.filter(pl.col("component") == "unmatched")
    assert un["measured_s"].to_list() == pytest.approx([7e-6]) and un["predicted_s"].to_list() == [None]
    from tracekit.replay.profile import match_profile

    m = match_profile(prof, res.steps, num_ranks=8)
    assert m.unmatched == pytest.approx({"outside any step": 3e-6, "kernels of category other": 7e-6})


def test_step_matching(run: dict[str, object]) -> None:
    from tracekit.replay.profile import match_profile

    root = run["root"]
    assert isinstance(root, Path)
    res = replay(root / "t", r1_h200_ep8())
    m = match_profile(run["profile"], res.steps, num_ranks=8)  # type: ignore[arg-type]
    assert m.match == "order" and m.step_map["profile_step"].to_list() == [40, 41, 42, 43]
    with pytest.raises(UsageError, match="are not replayed trace steps"):
        match_profile(run["profile"], res.steps, num_ranks=8, match="id")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="not ranks of the replayed deployment"):
        match_profile(run["profile"], res.steps, num_ranks=1)  # type: ignore[arg-type]


def test_cli_calibrate_from_profile_and_the_report(run: dict[str, object], tmp_path: Path) -> None:
    root = run["root"]
    assert isinstance(root, Path)
    files = [str(f) for f in run["files"]]  # type: ignore[attr-defined]
    args = ["calibrate", "--from-profile", files[0], "--from-profile", files[1], "--trace", str(root / "t"),
            "--hw", "h200-sxm", "--model", "deepseek-r1", "--ep", "8", "--precision", "experts=fp8",
            "--write", "--out", str(tmp_path / "presets"), "--report", str(tmp_path / "rep")]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "grouped_gemm.fp8" in res.output and "fitted" in res.output
    assert "unmatched profile kernels: none" in res.output
    preset = tmp_path / "presets" / "h200-sxm-profile.toml"
    assert get_hardware(preset).kernels[("grouped_gemm", "fp8")].memory_eff == pytest.approx(0.70, rel=0.05)
    rep = CliRunner().invoke(
        cli, ["report", "predicted-vs-measured", str(tmp_path / "rep"), "--format", "json"]
    )
    assert rep.exit_code == 0, rep.output
    rows = json.loads(rep.output)
    steps = [r for r in rows if r["component"] == "step"]
    assert {r["phase"] for r in steps} == {"prefill", "decode"}
    assert all(abs(r["error"]) < 0.05 for r in steps)
    html = tmp_path / "rep.html"
    assert (
        CliRunner().invoke(cli, ["report", "html", str(tmp_path / "rep"), "--out", str(html)]).exit_code == 0
    )
    assert "Predicted vs measured" in html.read_text()
    # replay --profile on the fitted preset: the same table, printed per component
    again = CliRunner().invoke(
        cli,
        [
            "replay",
            str(root / "t"),
            "--hw",
            str(preset),
            "--model",
            "deepseek-r1",
            "--ep",
            "8",
            "--precision",
            "experts=fp8",
            "--profile",
            files[0],
            "--out",
            str(tmp_path / "rep2"),
        ],
    )
    assert again.exit_code == 0, again.output
    assert "measured ms" in again.output
    assert (
        pl.read_parquet(tmp_path / "rep2" / "replay_profile.parquet").filter(pl.col("rank") == 0).height > 0
    )


def test_cli_errors(run: dict[str, object], tmp_path: Path) -> None:
    root = run["root"]
    assert isinstance(root, Path)
    f = str(run["files"][0])  # type: ignore[index]

    def call(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(cli, list(args))
        return r.exit_code, r.output

    code, out = call("calibrate", "--from-profile", f, "--hw", "h200-sxm")
    assert code == 2 and "--from-profile needs --trace" in out
    code, out = call("calibrate", "--trace", str(root / "t"))
    assert code == 2 and "add --from-profile PROFILE" in out
    code, out = call("calibrate", "--from-profile", f, "--trace", str(root / "t"))
    assert code == 2 and "--from-profile needs --hw" in out
    code, out = call(
        "calibrate",
        "--from-profile",
        str(tmp_path / "none.json"),
        "--trace",
        str(root / "t"),
        "--hw",
        "h200-sxm",
    )
    assert code == 2 and "no such file or folder" in out
    code, out = call("calibrate", "--from-profile", f, "--kernels")
    assert code == 2 and "drop --kernels" in out
    code, out = call("replay", str(root / "t"), "--hw", "h200-sxm", "--match", "id")
    assert code == 2 and "add --profile" in out
    # a profile of one rank against a one-GPU deployment that does not have it
    code, out = call("replay", str(root / "t"), "--hw", "h200-sxm", "--model", "deepseek-r1", "--ep", "8",
                     "--profile", str(run["files"][1]), "--match", "id")  # type: ignore[index]  # fmt: skip
    assert code == 2 and "--match id: profiled steps" in out
    assert NAMES["dispatch"]  # the fixture's kernel names are the ones the importer classifies
