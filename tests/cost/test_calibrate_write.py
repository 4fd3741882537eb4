"""`tracekit calibrate --write` writes user presets into --out and never touches the package's files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner

import tracekit
from tracekit.cli.main import cli
from tracekit.hardware import get_hardware

PACKAGE_PRESETS = Path(tracekit.__file__).parent / "data" / "hardware"


def _digests() -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(PACKAGE_PRESETS.glob("*.toml"))
    }


def test_write_goes_to_out_and_loads_as_user_presets(tmp_path: Path) -> None:
    before = _digests()
    assert before
    out = tmp_path / "presets"
    res = CliRunner().invoke(cli, ["calibrate", "--write", "--out", str(out)])
    assert res.exit_code in (0, 1), res.output  # 1: a calibration row over the limits (still written)
    written = sorted(out.glob("*.toml"))
    assert written, res.output
    assert _digests() == before  # the package's presets are unchanged
    for path in written:
        spec = get_hardware(str(path))  # a user preset file, inheriting the built-in preset
        assert spec.name
    # a second write refuses to replace without --force, in one line naming --out
    again = CliRunner().invoke(cli, ["calibrate", "--write", "--out", str(out)])
    assert again.exit_code == 2
    assert again.stderr.strip().splitlines() == [again.stderr.strip()] and "--force" in again.stderr
