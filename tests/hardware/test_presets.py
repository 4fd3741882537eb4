"""Hardware presets: every value sourced, the reference figures, overrides and user files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tracekit.cli.main import cli
from tracekit.errors import UnknownNameError, UsageError
from tracekit.hardware import COMM_IMPLS, get_hardware, hardware_names, parse_set_options

PRESETS = ["h100-sxm", "h200-sxm", "h800-sxm", "b200-hgx", "gb200-nvl72", "gb300-nvl72"]


def test_presets_listed() -> None:
    assert sorted(PRESETS) == hardware_names()


@pytest.mark.parametrize("name", PRESETS)
def test_every_value_has_a_source(name: str) -> None:
    hw = get_hardware(name)
    spec_fields = [
        "bf16_flops", "fp8_flops", "fp4_flops", "hbm_bytes", "hbm_bw", "scaleup_size", "gpus_per_node",
        "scaleup_bw", "scaleout_bw", "scaleup_latency_s", "scaleout_latency_s", "num_sms", "launch_gap_s",
        "launch_gap_eager_s",
    ]  # fmt: skip
    for f in spec_fields:
        assert hw.sources.get(f), f"{name}.{f} has no source"
    # every kernel family the replay prices has a curve, every field of it a source
    for family, dtype in (
        [("elementwise", "any")]
        + [(f, d) for f in ("gemm", "grouped_gemm") for d in ("bf16", "fp8")]
        + [(f, "bf16") for f in ("mla_decode", "mla_prefill", "gqa_decode", "gqa_prefill")]
    ):
        curve = hw.kernel_curve(family, dtype)
        assert 0 < curve.compute_eff <= 1 and 0 < curve.memory_eff <= 1
        for f in ("compute_eff", "memory_eff", "fixed_s"):
            assert hw.sources.get(f"kernel.{curve.family}.{curve.dtype}.{f}"), (
                f"{name} kernel.{family}.{dtype}.{f}"
            )
    assert set(hw.comm) == set(COMM_IMPLS)
    for impl, p in hw.comm.items():
        for f in ("eff_up", "eff_out", "dispatch_latency_s", "combine_latency_s"):
            assert hw.sources.get(f"comm.{impl}.{f}"), f"{name} comm.{impl}.{f} has no source"
        assert 0 < p.eff_up <= 1 and 0 < p.eff_out <= 1


def test_reference_figures() -> None:
    """Values of the public reference table (dense per-GPU figures)."""
    h200 = get_hardware("h200-sxm")
    assert (h200.bf16_flops, h200.fp8_flops, h200.hbm_bytes, h200.hbm_bw) == (989e12, 1979e12, 141e9, 4.8e12)
    assert (h200.scaleup_size, h200.scaleup_bw, h200.scaleout_bw) == (8, 450e9, 50e9)
    gb = get_hardware("gb200-nvl72")
    assert (gb.scaleup_size, gb.scaleup_bw, gb.fp4_flops) == (72, 900e9, 10e15)
    # 72 GPUs x 1.8 TB/s bidirectional = the announced 130 TB/s NVLink (rounded)
    assert 72 * 2 * gb.scaleup_bw == pytest.approx(130e12, rel=0.01)
    h800 = get_hardware("h800-sxm")
    assert h800.scaleup_bw * 2 == 400e9 and h800.bf16_flops == get_hardware("h100-sxm").bf16_flops
    assert get_hardware("gb300-nvl72").fp4_flops == 15e15


def test_fp4_falls_back_to_fp8_on_hopper() -> None:
    h = get_hardware("h200-sxm")
    assert h.peak_flops("fp4") == h.fp8_flops
    assert get_hardware("b200-hgx").peak_flops("fp4") == 9000e12


def test_overrides() -> None:
    hw = get_hardware("h200-sxm", parse_set_options(["scaleout_bw=1e11", "comm.deepep-ll.eff_out=0.5"]))
    assert hw.scaleout_bw == 1e11 and hw.comm["deepep-ll"].eff_out == 0.5
    assert hw.sources["scaleout_bw"] == "override"
    assert get_hardware("h200-sxm").scaleout_bw == 50e9  # the preset itself is unchanged
    with pytest.raises(UsageError, match="not a hardware field"):
        get_hardware("h200-sxm", {"nvlink": 1})
    with pytest.raises(UsageError, match="must be a number"):
        get_hardware("h200-sxm", {"scaleout_bw": "fast"})
    with pytest.raises(UsageError, match=r"must be in \(0, 1\]"):
        get_hardware("h200-sxm", {"kernel.gemm.fp8.compute_eff": 2})
    tuned = get_hardware("h200-sxm", {"kernel.gemm.fp8.compute_eff": 0.5, "scale.expert_gemm": 1.2})
    assert tuned.kernel_curve("gemm", "fp8").compute_eff == 0.5 and tuned.time_scale("expert_gemm") == 1.2
    assert get_hardware("h200-sxm").time_scale("expert_gemm") == 1.0
    with pytest.raises(UsageError, match="FIELD=VALUE"):
        parse_set_options(["scaleout_bw"])


def test_unknown_preset_lists_valid() -> None:
    with pytest.raises(UnknownNameError, match="gb200-nvl72"):
        get_hardware("tpu-v5")


def test_user_preset_file_with_base(tmp_path: Path) -> None:
    path = tmp_path / "my-h200.toml"
    path.write_text(
        'base = "h200-sxm"\nname = "my-h200"\n[spec]\nscaleout_bw = { value = 100e9, source = "our CX-8 NICs" }\n'
    )
    hw = get_hardware(str(path))
    assert hw.name == "my-h200" and hw.scaleout_bw == 100e9 and hw.hbm_bytes == 141e9
    assert hw.sources["scaleout_bw"] == "our CX-8 NICs"
    bad = tmp_path / "bad.toml"
    bad.write_text("[spec\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        get_hardware(str(bad))


def test_cli_hw_list_and_show() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["hw", "list", "--format", "csv"])
    assert out.exit_code == 0, out.output
    assert out.output.count("\n") == len(PRESETS) + 1
    out = runner.invoke(cli, ["hw", "show", "h200-sxm", "--format", "json", "--set", "hbm_bw=5e12"])
    assert out.exit_code == 0, out.output
    import json

    data = json.loads(out.output)
    fields = {f["field"]: f for f in data["fields"]}
    assert fields["hbm_bw"]["value"] == 5e12 and fields["hbm_bw"]["unit"] == "B/s"
    assert fields["hbm_bw"]["shown"] == "5000 GB/s" and fields["hbm_bw"]["source"] == "override"
    assert fields["scaleup_bw"]["shown"] == "450 GB/s"
    out = runner.invoke(cli, ["hw", "show", "nope"])
    assert out.exit_code == 2 and "valid names" in out.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a spec field above the [spec] line: at the top level, where nothing reads it
        (
            'hbm_bw = { value = 5e12, source = "x" }\n',
            r"'hbm_bw' at the top level is not read there; it belongs under \[spec\]",
        ),
        # a spec field after a [comm.<impl>] header lands in that table
        (
            '[comm.deepep-ll]\neff_up = { value = 0.5, source = "x" }\nscaleout_bw = { value = 1e11, source = "x" }\n',
            r"comm.deepep-ll.scaleout_bw is not read there; it belongs under \[spec\]",
        ),
        (
            "[comm]\neff_up = 0.5\n",
            r"'comm.eff_up' in \[comm\] is not read there; it belongs under a \[comm.<impl>\]",
        ),
        ("[deepep-ll]\neff_up = 0.5\n", r"'deepep-ll' at the top level .* belongs under \[comm.deepep-ll\]"),
        (
            "[spec]\neff_up = 0.5\n",
            r"spec.eff_up is not a \[spec\] field; it belongs under a \[comm.<impl>\]",
        ),
        (
            "[specs]\nhbm_bw = 5e12\n",
            r"unknown 'specs' at the top level; valid: base, name, description, gpu, spec",
        ),
        ("[comm.deepep]\neff_up = 0.5\n", r"unknown 'comm.deepep' in \[comm\]; valid: .*deepep-ll"),
        (
            "[kernel.gemm]\ncompute_eff = 0.5\n",
            r"'kernel.gemm.compute_eff' in \[kernel.gemm\] .* belongs under a \[kernel.<family>.<class>\]",
        ),
        (
            "[scale]\nexpert_gemm = 1.1\n[spec]\nlaunch = 2\n",
            r"spec.launch is not a \[spec\] field; it belongs under \[scale\]",
        ),
        ('spec = "h200"\n', r"'spec' must be a table"),
    ],
)
def test_user_preset_misplaced_fields_refused(tmp_path: Path, text: str, message: str) -> None:
    """A field where no table reads it is refused in one line naming it and where it belongs; before,
    a spec field at the top level was silently ignored and the base preset's value used."""
    path = tmp_path / "mine.toml"
    path.write_text('base = "h200-sxm"\n' + text)
    with pytest.raises(UsageError, match=message):
        get_hardware(str(path))
    res = CliRunner().invoke(cli, ["hw", "show", str(path)])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "Traceback" not in res.output


def test_builtin_presets_pass_the_layout_check() -> None:
    for name in hardware_names():
        assert get_hardware(name).name == name
