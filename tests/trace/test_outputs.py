"""The output lock, staged replacement and input checks of tracekit.trace.outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tracekit.errors import OutputBusyError, UsageError
from tracekit.trace import outputs
from tracekit.trace.outputs import Output, check_not_input, current_holder


def test_a_second_writer_is_refused_and_named(tmp_path: Path) -> None:
    out = tmp_path / "x.html"
    with Output(out, kind="file") as first:
        first.target.write_text("new")
        holder = current_holder(out)
        assert holder is not None and holder.pid == os.getpid() and holder.target == str(first.target)
        with pytest.raises(OutputBusyError, match=f"process {os.getpid()} is writing it now"):
            Output(out, kind="file", force=True).open()
    assert out.read_text() == "new"
    assert current_holder(out) is None
    assert not outputs.lock_path(out).exists()


def test_the_lock_of_a_killed_writer_is_free(tmp_path: Path) -> None:
    out = tmp_path / "d"
    code = textwrap.dedent(
        f"""
        import os
        from tracekit.trace.outputs import Output
        Output({str(out)!r}, kind="dir").open()
        os.kill(os.getpid(), 9)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == -9
    assert outputs.lock_path(out).exists()  # left behind, but nobody holds it
    assert current_holder(out) is None
    with Output(out, kind="dir", force=True) as o:
        (o.target / "f").write_text("x")
    assert (out / "f").read_text() == "x"


def test_force_replaces_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "res"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError), Output(out, kind="dir", force=True) as o:
        assert o.staged and o.target.parent == tmp_path and o.target.name.startswith(".res.tracekit-new-")
        (o.target / "new").write_text("half")
        raise RuntimeError("killed halfway")
    assert sorted(p.name for p in out.iterdir()) == ["old"]
    assert not [n for n in os.listdir(tmp_path) if "tracekit-new" in n]
    with Output(out, kind="dir", force=True) as o:
        (o.target / "new").write_text("whole")
    assert sorted(p.name for p in out.iterdir()) == ["new"]


def test_existing_output_needs_force_and_must_be_ours(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("keep")
    with pytest.raises(UsageError, match="file exists; choose another --out or pass --force"):
        Output(f, kind="file").open()
    d = tmp_path / "d"
    d.mkdir()
    (d / "precious").write_text("keep")
    with pytest.raises(UsageError, match="not a tracekit trace; refusing to delete it"):
        Output(d, kind="dir", force=True, what="trace", is_ours=lambda p: False).open()
    assert f.read_text() == "keep" and (d / "precious").read_text() == "keep"


def test_a_swap_cut_between_its_renames_is_undone(tmp_path: Path) -> None:
    out = tmp_path / "t"
    aside = tmp_path / f".t{outputs.OLD_TAG}999"
    aside.mkdir()
    (aside / "manifest.json").write_text("{}")
    stale = tmp_path / f".t{outputs.NEW_TAG}998"
    stale.mkdir()
    outputs.recover(out)
    assert (out / "manifest.json").read_text() == "{}"
    assert not aside.exists() and not stale.exists()


@pytest.mark.parametrize(
    ("out", "inp"),
    [("t", "t"), ("t/sub", "t"), ("a", "a/b/file.parquet")],
)
def test_an_output_that_is_or_touches_an_input_is_refused(tmp_path: Path, out: str, inp: str) -> None:
    (tmp_path / inp).parent.mkdir(parents=True, exist_ok=True)
    if inp.endswith(".parquet"):
        (tmp_path / inp).write_text("x")
    else:
        (tmp_path / inp).mkdir(exist_ok=True)
    with pytest.raises(UsageError, match="also an input"):
        check_not_input(tmp_path / out, [tmp_path / inp])
    check_not_input(tmp_path / "elsewhere", [tmp_path / inp])


def test_thrift_page_header_crc_detection() -> None:
    from tracekit.trace.health import _thrift_has_field

    # PageHeader in Thrift compact form: field 1 (i32, delta 1) = 0, field 2 = 10, field 3 = 10,
    # then field 4 (the crc) or field 5 (a struct: the data page header)
    with_crc = bytes([0x15, 0x00, 0x15, 0x14, 0x15, 0x14, 0x15, 0x02, 0x1C])
    without = bytes([0x15, 0x00, 0x15, 0x14, 0x15, 0x14, 0x2C])
    assert _thrift_has_field(with_crc, 4) is True
    assert _thrift_has_field(without, 4) is False
