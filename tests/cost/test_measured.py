"""The measured timing source: lookups against hand-computed values, coverage (NaN outside), library
choice, the Parquet round trip with its schema version, and the held-out check on exact data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.cost.measured import MeasuredTable, holdout_errors
from tracekit.errors import SchemaError, SchemaVersionError, UnknownNameError, UsageError
from tracekit.schema.measured import family_spec, family_specs, measured_spec, shape_columns, write_measured

BASE = {"timing_source": "cuda_event", "device": "test", "source": "test"}


def rows(family: str, dtype: str, library: str, shapes: list[dict], times: list[float]) -> list[dict]:
    return [
        {"family": family, "dtype": dtype, "library": library, **BASE, **s, "time_s": t}
        for s, t in zip(shapes, times, strict=True)
    ]


def gemm_model(m: np.ndarray | float, n: np.ndarray | float) -> np.ndarray | float:
    """A latency plus a cost per row along m (affine: what linear interpolation along a GEMM's size
    key reproduces exactly), times a power law in n (what log-space interpolation reproduces)."""
    return (2e-6 + 3e-9 * np.asarray(m)) * (np.asarray(n) / 1024) ** 0.8


def model_gemm(m_values: list[int], n_values: list[int], k: int = 1024) -> pl.DataFrame:
    """Rows of :func:`gemm_model` (affine in m, a power law in n) at every (m, n)."""
    shapes = [{"m": m, "n": n, "k": k} for n in n_values for m in m_values]
    times = [float(gemm_model(s["m"], s["n"])) for s in shapes]
    return pl.DataFrame(rows("gemm", "bf16", "torch", shapes, times))


def test_every_family_key_is_a_column_and_every_family_has_a_work_formula() -> None:
    cols = {c.name for c in measured_spec().columns}
    for name, spec in family_specs().items():
        assert set(spec.shape_keys) <= cols, name
        assert spec.interpolated_keys, name
    assert set(shape_columns()) == {k for f in family_specs().values() for k in f.shape_keys}


def test_grid_points_are_returned_exactly_and_the_model_is_interpolated_exactly() -> None:
    table = MeasuredTable(model_gemm([1, 4, 16, 64, 256], [1024, 4096]))
    m = np.array([1, 16, 256, 2, 10, 100, 200])
    got = table.time_s("gemm", dtype="bf16", m=m, n=1024, k=1024)
    np.testing.assert_allclose(got, gemm_model(m, 1024), rtol=1e-12)
    # between the n values too (outer key, linear in log-log)
    got_n = table.time_s("gemm", dtype="bfloat16", m=[8, 8], n=[2048, 3000], k=1024)
    np.testing.assert_allclose(got_n, gemm_model(8, np.array([2048, 3000])), rtol=1e-12)


def test_affine_families_interpolate_time_linearly_and_power_families_in_log_log() -> None:
    """Decode attention (size_axis affine) along kv_len: a latency plus a cost per KV token, exact
    by hand (not by a log-log line); prefill attention (power) along seq_len: a quadratic power law
    exact, where a straight line in time vs size would not be."""
    assert family_spec("gqa_decode").size_axis == "affine"
    assert family_spec("gqa_prefill").size_axis == "power"
    heads = {"head_dim": 128, "num_kv_heads": 8, "num_heads": 64, "batch_size": 8}
    kv = [1024, 4096, 16384]
    dec = rows(
        "gqa_decode", "bf16", "fa", [{**heads, "kv_len": v} for v in kv], [10e-6 + v * 1e-9 for v in kv]
    )
    seq = [256, 1024, 4096, 16384]
    pre = rows(
        "gqa_prefill", "bf16", "fa", [{**heads, "seq_len": v} for v in seq], [v * v * 1e-12 for v in seq]
    )
    table = MeasuredTable(pl.DataFrame(dec + pre))
    # kv 2048 lies a third of the way from 1024 to 4096: 10 us + 2.048 us, exactly
    assert table.time_s("gqa_decode", dtype="bf16", kv_len=2048, **heads) == pytest.approx(
        12.048e-6, rel=1e-12
    )
    q = np.array([512.0, 2000.0, 10000.0])
    got = table.time_s("gqa_prefill", dtype="bf16", seq_len=q, **heads)
    np.testing.assert_allclose(got, q * q * 1e-12, rtol=1e-12)


def test_no_extrapolation_and_exact_keys_must_match() -> None:
    table = MeasuredTable(model_gemm([4, 16, 64], [1024, 4096]))
    got = table.time_s("gemm", dtype="bf16", m=[2, 100, 16, 16], n=[1024, 1024, 8192, 512], k=1024)
    assert np.isnan(got).all()
    assert np.isnan(table.time_s("gemm", dtype="bf16", m=16, n=1024, k=2048))  # k never measured
    assert np.isnan(table.time_s("gemm", dtype="fp8", m=16, n=1024, k=1024))  # dtype never measured
    assert np.isnan(table.time_s("gemm", dtype="bf16", m=[0, -1, np.nan], n=1024, k=1024)).all()


def test_ragged_grid_needs_every_bracketing_slice() -> None:
    # n=1024 measured at m 1..64, n=4096 only at m 1..8: m=32 between the n values is not covered
    df = pl.concat([model_gemm([1, 8, 64], [1024]), model_gemm([1, 8], [4096])])
    table = MeasuredTable(df)
    inside = table.time_s("gemm", dtype="bf16", m=4, n=2048, k=1024)
    assert inside == pytest.approx(gemm_model(4, 2048), rel=1e-12)
    assert np.isnan(table.time_s("gemm", dtype="bf16", m=32, n=2048, k=1024))
    assert table.time_s("gemm", dtype="bf16", m=32, n=1024, k=1024) == pytest.approx(gemm_model(32, 1024))


def test_exact_keys_select_the_slice() -> None:
    shapes = [
        {"head_dim": d, "num_kv_heads": 8, "num_heads": 64, "batch_size": 8, "kv_len": kv}
        for d in (64, 128)
        for kv in (1024, 4096)
    ]
    times = [s["head_dim"] * s["kv_len"] * 1e-9 for s in shapes]
    table = MeasuredTable(pl.DataFrame(rows("gqa_decode", "bf16", "torch_sdpa", shapes, times)))
    common = {"num_kv_heads": 8, "num_heads": 64, "batch_size": 8, "kv_len": 2048}
    assert table.time_s("gqa_decode", dtype="bf16", head_dim=128, **common) == pytest.approx(128 * 2048e-9)
    assert np.isnan(table.time_s("gqa_decode", dtype="bf16", head_dim=96, **common))


def test_fastest_library_unless_one_is_named_and_duplicates_take_the_median() -> None:
    s = [{"m": m, "n": 64, "k": 64} for m in (1, 4, 16)]
    df = pl.DataFrame(
        rows("gemm", "bf16", "slow", s, [4e-6, 4e-6, 4e-6])
        + rows("gemm", "bf16", "fast", s[:2], [1e-6, 2e-6])
        + rows("gemm", "bf16", "fast", [s[0], s[0]], [3e-6, 5e-6])  # m=1 measured 3x: median 3e-6
    )
    table = MeasuredTable(df)
    got = table.time_s("gemm", dtype="bf16", m=[1, 2, 8], n=64, k=64)
    # m=1: fast median 3e-6; m=2: fast (between 3e-6 and 2e-6); m=8: only slow covers it
    assert got[0] == pytest.approx(3e-6)
    assert 2e-6 < got[1] < 3e-6
    assert got[2] == pytest.approx(4e-6)
    assert table.time_s("gemm", dtype="bf16", library="slow", m=1, n=64, k=64) == pytest.approx(4e-6)
    with pytest.raises(UnknownNameError, match="fast, slow"):
        table.time_s("gemm", dtype="bf16", library="cutlass", m=1, n=64, k=64)


def test_shapes_broadcast_and_bad_arguments_are_named() -> None:
    table = MeasuredTable(model_gemm([1, 4, 16, 64], [1024, 4096]))
    got = table.time_s("gemm", dtype="bf16", m=np.array([[2, 3], [5, 6]]), n=np.array([1024, 4096]), k=1024)
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got[1, 1], gemm_model(6, 4096))
    with pytest.raises(UsageError, match="missing: k"):
        table.time_s("gemm", dtype="bf16", m=1, n=1024)
    with pytest.raises(UsageError, match="unknown: tokens"):
        table.time_s("gemm", dtype="bf16", m=1, n=1024, k=1024, tokens=3)
    with pytest.raises(UsageError, match="unknown dtype"):
        table.time_s("gemm", dtype="bf61", m=1, n=1024, k=1024)
    with pytest.raises(UnknownNameError, match="grouped_gemm"):
        table.time_s("grouped_gem", dtype="bf16", m=1)


@given(
    st.lists(st.floats(1e-6, 1e-2), min_size=3, max_size=8).map(sorted),
    st.floats(0.0, 1.0),
)
def test_between_two_measured_sizes_the_time_stays_between_their_times(
    times: list[float], frac: float
) -> None:
    """Monotone data stays monotone and bounded (no overshoot along the size key)."""
    m_values = [2**i for i in range(len(times))]
    shapes = [{"m": m, "n": 64, "k": 64} for m in m_values]
    table = MeasuredTable(pl.DataFrame(rows("gemm", "bf16", "torch", shapes, times)))
    i = int(frac * (len(times) - 2))
    m = m_values[i] * 2**frac
    lo, hi = table.time_s("gemm", dtype="bf16", m=[m_values[i], m_values[i + 1]], n=64, k=64)
    got = float(table.time_s("gemm", dtype="bf16", m=m, n=64, k=64))
    assert lo * (1 - 1e-12) <= got <= hi * (1 + 1e-12)


def test_a_size_within_rounding_of_a_measured_one_is_covered() -> None:
    """Sizes one ulp inside the measured range (at either end, in the first and a later slice) get
    the model's time, not NaN."""
    table = MeasuredTable(model_gemm([1, 4, 16], [1024, 4096]))
    m = np.array([np.nextafter(1.0, 2.0), np.nextafter(16.0, 0.0)])
    for n in (1024, 4096):
        got = table.time_s("gemm", dtype="bf16", m=m, n=n, k=1024)
        np.testing.assert_allclose(got, gemm_model(m, n), rtol=1e-12)


def test_coverage_and_families() -> None:
    table = MeasuredTable(model_gemm([1, 4, 16], [1024, 4096]))
    assert table.families() == ["gemm"]
    cov = table.coverage("gemm")
    assert cov.row(0, named=True)["m_min"] == 1 and cov.row(0, named=True)["m_max"] == 16
    assert cov.row(0, named=True)["n_values"] == 2 and cov.row(0, named=True)["rows"] == 6
    assert table.coverage("mla_decode").is_empty()


def test_holdout_of_the_model_is_exact() -> None:
    table = MeasuredTable(model_gemm([1, 2, 4, 8, 16, 32], [1024, 2048, 4096]))
    err = holdout_errors(table, "gemm")
    assert err.height == 3 * 4  # interior m values of each n slice
    assert err["error"].abs().max() < 1e-9
    along_n = holdout_errors(table, "gemm", "n")
    assert sorted(set(along_n["n"].to_list())) == [2048]


def test_parquet_round_trip_with_schema_version(tmp_path: Path) -> None:
    df = model_gemm([1, 4], [1024])
    path = write_measured(df, tmp_path / "m.parquet")
    meta = pq.ParquetFile(path).schema_arrow.metadata
    assert meta[b"tracekit.schema_version"] == b"1.0" and meta[b"tracekit.table"] == b"measured"
    back = MeasuredTable.load(path)
    assert back.frame.height == 2
    assert back.time_s("gemm", dtype="bf16", m=4, n=1024, k=1024) == pytest.approx(gemm_model(4, 1024))
    # flops/bytes are the writer's business; a newer major version is refused
    table = pq.read_table(path)
    newer = table.replace_schema_metadata(
        {b"tracekit.schema_version": b"2.0", b"tracekit.table": b"measured"}
    )
    pq.write_table(newer, tmp_path / "new.parquet")
    with pytest.raises(SchemaVersionError, match="upgrade tracekit"):
        MeasuredTable.load(tmp_path / "new.parquet")
    other = table.replace_schema_metadata({b"tracekit.schema_version": b"1.0", b"tracekit.table": b"routing"})
    pq.write_table(other, tmp_path / "routing.parquet")
    with pytest.raises(SchemaError, match="not a measured table"):
        MeasuredTable.load(tmp_path / "routing.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(SchemaError, match="not a readable Parquet"):
        MeasuredTable.load(tmp_path / "junk.parquet")
    with pytest.raises(UsageError, match="no such file"):
        MeasuredTable.load(tmp_path / "absent.parquet")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"family": "gemmm"}, "unknown kernel family gemmm"),
        ({"dtype": "fp7"}, "unknown dtype"),
        ({"time_s": -1.0}, "positive"),
        ({"m": None}, "without m"),
        ({"m": 0}, "m <= 0"),
    ],
)
def test_bad_rows_are_refused_by_name(change: dict, message: str) -> None:
    row = rows("gemm", "bf16", "torch", [{"m": 4, "n": 8, "k": 8}], [1e-6])[0]
    with pytest.raises(SchemaError, match=message):
        MeasuredTable(pl.DataFrame([{**row, **change}], infer_schema_length=None))


def test_missing_required_column_is_named() -> None:
    row = rows("gemm", "bf16", "torch", [{"m": 4, "n": 8, "k": 8}], [1e-6])[0]
    del row["device"]
    with pytest.raises(SchemaError, match="missing required column"):
        MeasuredTable(pl.DataFrame([row]))


def test_family_registry_names_the_shape_keys() -> None:
    spec = family_spec("grouped_gemm")
    assert spec.interpolated_keys == ("hidden_size", "ffn_size", "num_experts", "tokens_per_expert")
    with pytest.raises(UnknownNameError, match="gemm"):
        family_spec("gem")
