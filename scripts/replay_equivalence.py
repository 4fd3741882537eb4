"""Check that a change to the replay leaves every output equal, value for value.

Runs a fixed set of replays, compares, sweeps, placement what-ifs and disaggregated replays through
the command line of a given source tree (the sample traces and a synthesized DeepSeek-R1 decode
trace), writing every result table and JSON output under one folder; then compares two such
folders (for example the tree before a change and after it) and prints each difference.

    python scripts/replay_equivalence.py run --tree OLD_CHECKOUT --out before
    python scripts/replay_equivalence.py run --tree . --out after
    python scripts/replay_equivalence.py diff before after

Run-specific values (run ids, creation times) are left out of the comparison; everything else,
floats included, must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_traces"
#: Values that differ from run to run by design.
VOLATILE = {"run_id", "created_at"}


def scenarios(traces: Path) -> list[tuple[str, list[str]]]:
    """(name, tracekit arguments); ``{out}`` is the scenario's output folder, ``{work}`` a scratch one."""
    dsv3 = str(SAMPLES / "tiny-deepseek-v3")
    r1 = str(traces / "r1-decode")
    out: list[tuple[str, list[str]]] = []
    for t in sorted(p.name for p in SAMPLES.iterdir() if (p / "manifest.json").exists()):
        out.append((f"sample-{t}", ["replay", str(SAMPLES / t), "--hw", "h200-sxm", "--out", "{out}/r"]))
    r1a = ["--model", "deepseek-r1"]
    out += [
        ("dsv3-h200-ep16", ["replay", dsv3, *r1a, "--hw", "h200-sxm", "--ep", "16", "--batch-per-gpu", "16"]),
        ("dsv3-h200-ep16-tbo", ["replay", dsv3, *r1a, "--hw", "h200-sxm", "--ep", "16", "--tbo"]),
        (
            "dsv3-gb200-ep64-fp4-tbo",
            ["replay", dsv3, *r1a, "--hw", "gb200-nvl72", "--ep", "64", "--tbo", "--precision", "experts=fp4"],
        ),
        (
            "dsv3-h200-tp2-nccl",
            ["replay", dsv3, *r1a, "--hw", "h200-sxm", "--ep", "16", "--tp", "2", "--impl", "nccl",
             "--kv-len", "4096", "--batch-per-gpu", "8"],
        ),
        (
            "dsv3-gb200-normal-redundant",
            ["replay", dsv3, *r1a, "--hw", "gb200-nvl72", "--ep", "32", "--impl", "deepep-normal",
             "--redundant", "32", "--prefill-tokens-per-gpu", "512", "--steps", "3"],
        ),
        (
            "dsv3-disagg",
            ["replay", dsv3, *r1a, "--disagg", "--prefill-hw", "h200-sxm", "--prefill-ep", "8",
             "--hw", "gb200-nvl72", "--ep", "32"],
        ),
        ("place-eplb", ["place", dsv3, "--ep", "8", "--redundant", "8", "--policy", "eplb-global",
                        "--out", "{work}/p1.parquet"]),
        ("dsv3-placement", ["replay", dsv3, "--hw", "h200-sxm", "--ep", "8", "--placement", "{work}/p1.parquet",
                            "--model", "deepseek-v3"]),
        ("place-epochs", ["place", dsv3, "--ep", "8", "--redundant", "8", "--policy", "greedy",
                          "--recompute-every", "8", "--out", "{work}/p2.parquet"]),
        ("dsv3-epochs", ["replay", dsv3, "--hw", "h200-sxm", "--ep", "8", "--placement", "{work}/p2.parquet",
                         "--batch-per-gpu", "4", "--tbo"]),
        ("place-evaluate", ["place", dsv3, "--ep", "8", "--redundant", "8", "--window", "16", "--evaluate",
                            "--hw", "h200-sxm", "--model", "deepseek-v3"]),
        ("compare", ["compare", dsv3, *r1a, "--hw", "h200-sxm", "--hw", "gb200-nvl72", "--out", "{out}/r"]),
        ("compare-interactivity", ["compare", dsv3, *r1a, "--hw", "h200-sxm", "--hw", "gb200-nvl72",
                                   "--at-interactivity", "50", "--precision", "experts=fp8", "--out", "{out}/r"]),
        ("sweep", ["sweep", dsv3, *r1a, "--hw", "h200-sxm", "--hw", "gb200-nvl72", "--ep", "8,16",
                   "--batch-per-gpu", "8,32", "--tbo-grid", "both", "--jobs", "1", "--no-plot", "--out", "{out}/r"]),
        ("r1-gb200-ep32-tbo", ["replay", r1, "--hw", "gb200-nvl72", "--ep", "32", "--batch-per-gpu", "32", "--tbo"]),
        ("r1-h200-ep32-redundant", ["replay", r1, "--hw", "h200-sxm", "--ep", "32", "--redundant", "32"]),
        ("r1-h200-ep16-normal", ["replay", r1, "--hw", "h200-sxm", "--ep", "16", "--impl", "deepep-normal",
                                 "--precision", "fp8"]),
        ("r1-compare", ["compare", r1, "--hw", "h200-sxm", "--hw", "gb200-nvl72", "--ep", "32",
                        "--batch-per-gpu", "64", "--out", "{out}/r"]),
        ("r1-place-evaluate", ["place", r1, "--ep", "32", "--redundant", "32", "--nodes", "4",
                               "--evaluate", "--hw", "h200-sxm"]),
    ]  # fmt: skip
    for _, args in out:
        if args[0] == "replay" and "--out" not in args:
            args += ["--out", "{out}/r"]
    return out


def _tracekit(tree: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tracekit.cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def run(tree: Path, out: Path, traces: Path) -> None:
    tree = tree.resolve()
    out.mkdir(parents=True, exist_ok=False)
    (out / "_work").mkdir()
    traces = traces.resolve()
    if not (traces / "r1-decode" / "manifest.json").exists():
        synth = ["synth", "--model", "deepseek-r1", "--phase", "decode", "--tokens-per-step", "512", "--steps",
                 "8", "--routing", "zipf:1.1", "--seed", "3", "--ep", "32", "--out", str(traces / "r1-decode")]  # fmt: skip
        done = _tracekit(ROOT, synth, Path.cwd())
        if done.returncode:
            raise SystemExit(f"synth failed: {done.stderr.strip()}")
    for name, args in scenarios(traces):
        where = out / name
        where.mkdir()
        # paths relative to the output folder (the working directory), so both runs print the same
        args = [a.replace("{out}", name).replace("{work}", "_work") for a in args]
        t0 = time.perf_counter()
        done = _tracekit(tree, [*args, "--json"], out)
        (where / "stdout.json").write_text(done.stdout)
        (where / "exit_code").write_text(f"{done.returncode}\n{done.stderr.strip()}\n")
        print(f"{name}: exit {done.returncode} in {time.perf_counter() - t0:.1f} s", flush=True)


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _diff_json(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'after' if k not in a else 'before'}")
            else:
                _diff_json(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff_json(x, y, f"{where}[{i}]", out)
    elif a != b:
        out.append(f"{where}: {a!r} != {b!r}")


def _diff_frame(a: pl.DataFrame, b: pl.DataFrame, where: str, out: list[str], notes: list[str]) -> None:
    a = a.drop([c for c in a.columns if c in VOLATILE])
    b = b.drop([c for c in b.columns if c in VOLATILE])
    # a column of nulls stored with Arrow's null type on one side and a declared type on the other
    # holds the same values: noted, not counted as a difference
    for c in set(a.columns) & set(b.columns):
        for x, y in ((a, b), (b, a)):
            if x[c].dtype == pl.Null and y[c].dtype != pl.Null and y[c].null_count() == y.height:
                notes.append(f"{where}.{c}: all null, stored as {x[c].dtype} vs {y[c].dtype}")
                if x is a:
                    a = a.with_columns(pl.col(c).cast(y[c].dtype))
                else:
                    b = b.with_columns(pl.col(c).cast(y[c].dtype))
    if a.columns != b.columns:
        out.append(f"{where}: columns differ: {a.columns} vs {b.columns}")
        return
    if a.schema != b.schema:
        out.append(f"{where}: types differ: {dict(a.schema)} vs {dict(b.schema)}")
        return
    if a.height != b.height:
        out.append(f"{where}: {a.height} rows vs {b.height}")
        return
    for c in a.columns:
        if not a[c].equals(b[c]):
            bad = (a[c] != b[c]).fill_null(True) if a[c].dtype != pl.List else pl.Series([True])
            first = int(bad.arg_max() or 0)
            out.append(f"{where}.{c}: differs (first at row {first}: {a[c][first]!r} vs {b[c][first]!r})")


def diff(before: Path, after: Path) -> int:
    problems: list[str] = []
    notes: list[str] = []
    names = sorted(p.name for p in before.iterdir() if p.is_dir() and not p.name.startswith("_"))
    for name in names:
        a, b = before / name, after / name
        if not b.is_dir():
            problems.append(f"{name}: missing after")
            continue
        for f in sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()):
            fa, fb = a / f, b / f
            where = f"{name}/{f}"
            if not fb.exists():
                problems.append(f"{where}: missing after")
            elif f.suffix == ".parquet":
                _diff_frame(pl.read_parquet(fa), pl.read_parquet(fb), where, problems, notes)
            elif f.suffix == ".json":
                ja = _strip(_load_json(fa.read_text()))
                jb = _strip(_load_json(fb.read_text()))
                _diff_json(ja, jb, where, problems)
            elif fa.read_bytes() != fb.read_bytes():
                problems.append(f"{where}: differs")
    for p in problems:
        print(p)
    print(
        f"{len(names)} scenarios compared, {len(problems)} differences; {len(notes)} all-null columns now typed"
    )
    return 1 if problems else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every scenario with the tracekit of --tree")
    r.add_argument("--tree", type=Path, default=ROOT, help="source tree whose tracekit runs [this one]")
    r.add_argument("--out", type=Path, required=True, help="new folder for the outputs")
    r.add_argument("--traces", type=Path, default=Path("bench_out/equivalence"), help="synthesized traces")
    d = sub.add_parser("diff", help="compare two output folders")
    d.add_argument("before", type=Path)
    d.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.tree, args.out, args.traces)
    else:
        raise SystemExit(diff(args.before, args.after))


if __name__ == "__main__":
    main()
