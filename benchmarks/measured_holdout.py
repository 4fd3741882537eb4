"""Held-out interpolation check of the measured timing source on AIConfigurator's databases.

    python benchmarks/measured_holdout.py                       # h200_sxm and gb200, trtllm
    python benchmarks/measured_holdout.py --system b200_sxm --axis all
    python benchmarks/measured_holdout.py --framework sglang --adjacent-m   # + GEMM rows one m apart

For every kernel family, each measured shape that has measured neighbours on both sides along the
family's size axis (its innermost interpolated key: m, tokens_per_expert, kv_len, seq_len,
message_bytes, num_tokens) is dropped and predicted from the rest of the table
(:func:`tracekit.cost.measured.holdout_errors`). Prints, per family, the held-out points, how many
the rest still covers, and the median, 90th percentile and worst |predicted / measured - 1|, and
the share within 3%. ``--adjacent-m`` adds, per dtype of the dense GEMMs, how far apart the
database's own rows one m apart are (m and m + 1, m >= 32, other keys equal): the median of
|t(m + 1) / t(m) - 1|, the scatter no interpolation between the grid's neighbours can follow.
Needs the aiconfigurator extra (or --data-dir).
"""

from __future__ import annotations

import argparse
import sys
import time

import polars as pl

from tracekit.cost.measured import MeasuredTable, holdout_errors
from tracekit.schema.measured import family_spec


def rows_for(table: MeasuredTable, system: str, axis: str) -> list[list[str]]:
    out = []
    for fam in table.families():
        spec = family_spec(fam)
        keys = spec.interpolated_keys if axis == "all" else spec.interpolated_keys[-1:]
        for key in keys:
            e = holdout_errors(table, fam, key)
            if e.is_empty():
                continue
            err = e["error"].abs().drop_nans()
            dtypes = ",".join(sorted(e["dtype"].unique().to_list()))
            if err.is_empty():
                out.append([system, fam, dtypes, key, str(e.height), "0", "", "", "", ""])
                continue
            out.append(
                [
                    system,
                    fam,
                    dtypes,
                    key,
                    str(e.height),
                    str(err.len()),
                    f"{100 * err.median():.2f}",
                    f"{100 * err.quantile(0.9):.1f}",
                    f"{100 * err.max():.0f}",
                    f"{100 * (err <= 0.03).mean():.0f}",
                ]
            )
    return out


def adjacent_m_rows(table: MeasuredTable, system: str) -> list[list[str]]:
    """Per dtype of ``gemm``: pairs of rows at m and m + 1 (m >= 32, same n, k, library) and the
    median |t(m + 1) / t(m) - 1| (in %), with its signed median."""
    keys = ["dtype", "library", "n", "k"]
    g = table.frame.filter(pl.col("family") == "gemm").group_by([*keys, "m"]).agg(pl.col("time_s").median())
    nxt = g.with_columns((pl.col("m") - 1).alias("m")).rename({"time_s": "next_s"})
    pairs = g.filter(pl.col("m") >= 32).join(nxt, on=[*keys, "m"])
    pairs = pairs.with_columns((pl.col("next_s") / pl.col("time_s") - 1).alias("step"))
    out = []
    for (dt,), grp in pairs.group_by(["dtype"], maintain_order=False):
        step = grp["step"]
        out.append(
            [
                system,
                str(dt),
                str(grp.height),
                f"{100 * step.abs().median():.1f}",
                f"{100 * step.median():+.1f}",
            ]
        )
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", action="append", help="AIConfigurator system (repeatable) [h200_sxm, gb200]")
    ap.add_argument("--framework", default="trtllm")
    ap.add_argument(
        "--axis", choices=["size", "all"], default="size", help="Hold out along the size axis or every one."
    )
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--adjacent-m", action="store_true", help="Also print how far GEMM rows one m apart are.")
    args = ap.parse_args()
    header = [
        "system",
        "family",
        "dtypes",
        "held-out key",
        "points",
        "covered",
        "median |err| %",
        "p90 %",
        "worst %",
        "within 3% (%)",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    t0 = time.perf_counter()
    tables = {}
    for system in args.system or ["h200_sxm", "gb200"]:
        table = tables[system] = MeasuredTable.from_aiconfigurator(
            system=system, framework=args.framework, data_dir=args.data_dir
        )
        for row in rows_for(table, system, args.axis):
            print("| " + " | ".join(row) + " |")
    if args.adjacent_m:
        head = ["system", "gemm dtype", "pairs (m, m + 1)", "median |t(m+1)/t(m) - 1| %", "signed median %"]
        print("\n| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for system, table in tables.items():
            for row in adjacent_m_rows(table, system):
                print("| " + " | ".join(row) + " |")
    print(f"\n({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
